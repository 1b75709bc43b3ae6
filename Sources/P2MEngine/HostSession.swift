/// Wraps a host for the duration of one scan: counts map calls, frames and bytes, and
/// keeps the batch size in one place so no caller maps one page per call by accident.
final class HostSession {
    let host: any P2MHost
    let domid: DomID
    let batchFrames: Int
    var stats = ScanStats()

    init(host: any P2MHost, domid: DomID, batchFrames: Int) {
        self.host = host
        self.domid = domid
        self.batchFrames = max(1, batchFrames)
    }

    func map(_ mfns: UnsafeBufferPointer<UInt64>) throws(HostError) -> FrameMapping {
        stats.mapCalls += 1
        stats.framesMapped += UInt64(mfns.count)
        return try host.mapFrames(domid, mfns)
    }

    func map(_ mfns: [UInt64]) throws(HostError) -> FrameMapping {
        try mfns.withUnsafeBufferPointer { (buf) throws(HostError) in try map(buf) }
    }

    func noteRead(bytes: Int) { stats.bytesRead &+= UInt64(bytes) }
}

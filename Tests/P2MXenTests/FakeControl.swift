// A scripted XenControlInterface: answers with chosen values or errnos and records
// every call, so the tests can check what XenHost asked for and when.

import Foundation
import Logging
@testable import P2MXen

final class FakeControl: XenControlInterface, @unchecked Sendable {
    enum Op: Hashable, Sendable, CaseIterable {
        case open, listDomains, domainInfo, guestWidth, nrGpfns, maxRAMPage, sharedInfo
        case mapFrames, unmapFrames, mapM2P, unmapM2P, domainName, ownXenstoreValue
    }

    struct LogLine {
        var level: Int32
        var errnoval: Int32
        var context: String
        var message: String
    }

    static var handle: OpaquePointer { OpaquePointer(bitPattern: 0xF00D)! }

    private let lock = NSLock()
    // Script, set before use.
    var failures: [Op: Int32] = [:]
    var domains: [RawDomainInfo] = []
    var width: UInt32 = 8
    var nrGpfnsValue: UInt64 = 0x10000
    /// Xen's max_page: one past the last frame.
    var maxRAMPageValue: UInt64 = 0x80000
    var names: [UInt32: String] = [:]
    var frameErrors: [UInt64: Int32] = [:]
    /// The calling domain's own xenstore keys ("domid"); a missing key is ENOENT.
    var ownXenstore: [String: String] = ["domid": "0"]
    /// Like Xen, refuse foreign mappings of the calling domain (ESRCH from the
    /// hypervisor's "cannot specify itself as foreign domain").
    var refuseMappingDomid: UInt32? = 0
    /// Sent through the shim's log callback while opening / while mapping frames.
    var logsOnOpen: [LogLine] = []
    var logsOnMap: [LogLine] = []

    // Record.
    private(set) var listCalls: [(first: UInt32, max: UInt32)] = []
    private(set) var calls: [Op] = []
    private(set) var closeCount = 0
    private(set) var wrongHandleUses = 0
    private(set) var liveFrameMappings: [UnsafeMutableRawPointer: Int] = [:]
    private(set) var unmapFrameCalls: [(base: UnsafeMutableRawPointer, count: UInt32)] = []
    private(set) var mapM2PRequests: [UInt64] = []
    private(set) var unmapM2PCalls: [(base: UnsafePointer<UInt64>, bytes: Int)] = []
    private var log: (XenLogCallback, UnsafeMutableRawPointer)?

    private func enter(_ op: Op, _ h: XenHandle?) throws(ShimErrno) {
        lock.lock()
        defer { lock.unlock() }
        calls.append(op)
        if let h, h != Self.handle { wrongHandleUses += 1 }
        if let e = failures[op] { throw ShimErrno(e) }
    }

    private func send(_ lines: [LogLine]) {
        guard let (fn, ctx) = log else { return }
        for l in lines { fn(ctx, l.level, l.errnoval, l.context, l.message) }
    }

    func count(_ op: Op) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return calls.filter { $0 == op }.count
    }

    func open(log: XenLogCallback?, context: UnsafeMutableRawPointer?) throws(ShimErrno) -> XenHandle {
        if let log, let context { self.log = (log, context) }
        // Like libxenctrl, explain a failure through the logger before returning it.
        send(logsOnOpen)
        try enter(.open, nil)
        return Self.handle
    }

    func close(_ h: XenHandle) {
        lock.lock()
        defer { lock.unlock() }
        if h != Self.handle { wrongHandleUses += 1 }
        closeCount += 1
    }

    func listDomains(_ h: XenHandle, first: UInt32, max: UInt32) throws(ShimErrno) -> [RawDomainInfo] {
        lock.lock()
        listCalls.append((first, max))
        lock.unlock()
        try enter(.listDomains, h)
        return Array(domains.filter { $0.domid >= first }.prefix(Int(max)))
    }

    func domainInfo(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> RawDomainInfo {
        try enter(.domainInfo, h)
        guard let d = domains.first(where: { $0.domid == domid }) else { throw ShimErrno(ESRCH) }
        return d
    }

    func guestWidth(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> UInt32 {
        try enter(.guestWidth, h)
        return width
    }

    func nrGpfns(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> UInt64 {
        try enter(.nrGpfns, h)
        return nrGpfnsValue
    }

    func maxRAMPage(_ h: XenHandle) throws(ShimErrno) -> UInt64 {
        try enter(.maxRAMPage, h)
        return maxRAMPageValue
    }

    func readSharedInfoPage(_ h: XenHandle, domid: UInt32, frame: UInt64) throws(ShimErrno) -> [UInt8] {
        try enter(.sharedInfo, h)
        if domid == refuseMappingDomid { throw ShimErrno(ESRCH) }
        var page = [UInt8](repeating: 0, count: 4096)
        page[0] = UInt8(truncatingIfNeeded: domid)
        page[1] = UInt8(truncatingIfNeeded: frame)
        return page
    }

    /// Page i of a mapping starts with mfns[i] as a little-endian UInt64.
    func mapFrames(_ h: XenHandle, domid: UInt32, mfns: UnsafeBufferPointer<UInt64>) throws(ShimErrno) -> MappedFrames {
        try enter(.mapFrames, h)
        if domid == refuseMappingDomid { throw ShimErrno(ESRCH) }
        send(logsOnMap)
        let base = UnsafeMutableRawPointer.allocate(byteCount: mfns.count * 4096, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: mfns.count * 4096)
        var errors: [Int32] = []
        for (i, mfn) in mfns.enumerated() {
            base.storeBytes(of: mfn.littleEndian, toByteOffset: i * 4096, as: UInt64.self)
            errors.append(frameErrors[mfn] ?? 0)
        }
        lock.lock()
        liveFrameMappings[base] = mfns.count
        lock.unlock()
        return MappedFrames(base: base, errors: errors)
    }

    func unmapFrames(_ h: XenHandle, base: UnsafeMutableRawPointer, count: UInt32) throws(ShimErrno) {
        lock.lock()
        unmapFrameCalls.append((base, count))
        let wasLive = liveFrameMappings.removeValue(forKey: base) != nil
        lock.unlock()
        if wasLive { base.deallocate() }
        try enter(.unmapFrames, h)
    }

    /// Like xc_map_m2p: whole 2 MiB chunks, entry i holding i * 3.
    func mapM2P(_ h: XenHandle, entries: UInt64) throws(ShimErrno) -> UnsafePointer<UInt64> {
        try enter(.mapM2P, h)
        lock.lock()
        mapM2PRequests.append(entries)
        lock.unlock()
        let n = Int(entries + (1 << 18) - 1) & ~((1 << 18) - 1)
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: n)
        for i in 0..<n { p[i] = UInt64(i) &* 3 }
        return UnsafePointer(p)
    }

    func unmapM2P(base: UnsafePointer<UInt64>, mappedBytes: Int) throws(ShimErrno) {
        lock.lock()
        unmapM2PCalls.append((base, mappedBytes))
        lock.unlock()
        UnsafeMutablePointer(mutating: base).deallocate()
        try enter(.unmapM2P, nil)
    }

    func domainName(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> String {
        try enter(.domainName, h)
        guard let n = names[domid] else { throw ShimErrno(ENOENT) }
        return n
    }

    func ownXenstoreValue(_ h: XenHandle, key: String) throws(ShimErrno) -> String {
        try enter(.ownXenstoreValue, h)
        guard let v = ownXenstore[key] else { throw ShimErrno(ENOENT) }
        return v
    }
}

func raw(_ domid: UInt32, _ flags: DomainFlags = [], handle: [UInt8] = Array(repeating: 0, count: 16)) -> RawDomainInfo {
    RawDomainInfo(domid: domid, flags: flags, totPages: 0x10000, maxPages: 0x20000,
                  sharedInfoFrame: 0xabc00 + UInt64(domid), handle: handle)
}

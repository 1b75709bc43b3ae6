import Foundation
import Logging
import P2MEngine
import P2MXen

/// Item 5: on a real Xen host, xenp2m's full check of one guest against two baselines
/// measured in the same run, interleaved (one of each per round, in a rotating order):
/// `xen-mfndump dump-p2m` of the same guest, and the map floor, which replays the map
/// calls the scan made (same frames, same batches) and reads every word of every page
/// with no checks: what any tool that reads the P2M from dom0 must pay at least.
struct XenBench {
    var domid: DomID
    var repeats: Int
    var batchFrames: Int
    var mfndump: String

    func run() throws {
        var logger = Logger(label: "xenp2m-bench")
        logger.logLevel = .warning
        let host: XenHost
        do { host = try XenHost.open(logger: logger) } catch { throw BenchError("cannot open Xen: \(error)") }
        guard FileManager.default.isExecutableFile(atPath: mfndump) else {
            throw BenchError("no xen-mfndump at \(mfndump) (Debian: xen-utils-4.17; pass --mfndump PATH)")
        }
        var opts = ScanOptions()
        opts.batchFrames = batchFrames
        let recorder = RecordingHost(host)
        let first = P2MScanner(host: recorder, options: opts).scan(domid)
        guard first.severity != .error else { throw BenchError("xenp2m could not scan domain \(domid): \(first.error ?? "error")") }
        let batches = recorder.batches
        let scanner = P2MScanner(host: host, options: opts)
        let clock = ContinuousClock()

        func timeScan() throws -> Double {
            let t0 = clock.now
            let r = scanner.scan(domid)
            let t = ns(clock.now - t0)
            guard r.severity != .error else { throw BenchError("xenp2m could not scan domain \(domid): \(r.error ?? "error")") }
            return t
        }
        var sink: UInt64 = 0
        func timeFloor() throws -> Double {
            let t0 = clock.now
            for b in batches {
                let m = try b.withUnsafeBufferPointer { buf throws(HostError) in try host.mapFrames(domid, buf) }
                for i in 0..<m.count {
                    guard let p = m.page(i) else { continue }
                    let w = p.assumingMemoryBound(to: UInt64.self)
                    for k in 0..<(pageSize / 8) { sink &+= w[k] }
                }
            }
            return ns(clock.now - t0)
        }
        func timeDump() throws -> Double {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: mfndump)
            p.arguments = ["dump-p2m", "\(domid)"]
            // Its text goes to /dev/null: the comparison is of the work, not of a terminal.
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            let t0 = clock.now
            try p.run()
            p.waitUntilExit()
            let t = ns(clock.now - t0)
            guard p.terminationStatus == 0 else { throw BenchError("xen-mfndump dump-p2m \(domid) exited \(p.terminationStatus)") }
            return t
        }
        let contenders = [timeScan, timeFloor, timeDump]
        var scan: [Double] = [], floor: [Double] = [], dump: [Double] = []
        for round in 0..<max(1, repeats) {
            var t = [Double](repeating: 0, count: 3)
            for k in 0..<3 {
                let which = (k + round) % 3
                t[which] = try contenders[which]()
            }
            scan.append(t[0]); floor.append(t[1]); dump.append(t[2])
        }
        precondition(sink != 0x5eed_f100, "unreachable: keeps the floor's loads alive")
        let frames = batches.reduce(0) { $0 + $1.count }
        let r = first
        print("\n## 5. real Xen: domain \(domid), \(r.maxPfn?.effective ?? 0) pfns (\(r.populated) populated), primary format \(r.primaryFormat?.rawValue ?? "none"), "
              + "\(max(1, repeats)) interleaved rounds (median [min-max]); load average \(loadAverage())")
        print(pad("tool", 46) + "seconds (median)")
        print(pad("xenp2m full check (walk + checks)", 46) + String(format: "%.4f", XenP2MBench.median(scan) / 1e9))
        print(pad("map floor (\(batches.count) map calls, \(frames) frames, read only)", 46) + String(format: "%.4f", XenP2MBench.median(floor) / 1e9))
        print(pad("xen-mfndump dump-p2m > /dev/null", 46) + String(format: "%.4f", XenP2MBench.median(dump) / 1e9))
        let overDump = XenP2MBench.Spread(values: zip(scan, dump).map { $0 / $1 })
        let overFloor = XenP2MBench.Spread(values: zip(scan, floor).map { $0 / $1 })
        print("ratio xenp2m/map_floor = \(f(overFloor.median)) [\(f(overFloor.values.min()!))-\(f(overFloor.values.max()!))] (goal <= 1.3)")
        print("ratio xenp2m/xen-mfndump = \(String(format: "%.2f", overDump.median)) [\(f(overDump.values.min()!))-\(f(overDump.values.max()!))]")
    }
}

/// Passes every call through and keeps the frames of each map call, so the floor can
/// replay exactly the scan's batches.
final class RecordingHost: P2MHost, @unchecked Sendable {
    let inner: any P2MHost
    private let lock = NSLock()
    private var recorded: [[UInt64]] = []
    init(_ inner: any P2MHost) { self.inner = inner }

    var batches: [[UInt64]] { lock.lock(); defer { lock.unlock() }; return recorded }
    var backendName: String { inner.backendName }
    func listDomains() throws(HostError) -> [DomainInfo] { try inner.listDomains() }
    func domainInfo(_ domid: DomID) throws(HostError) -> DomainInfo { try inner.domainInfo(domid) }
    func guestWidth(_ domid: DomID) throws(HostError) -> GuestWidth { try inner.guestWidth(domid) }
    func nrGpfns(_ domid: DomID) throws(HostError) -> UInt64 { try inner.nrGpfns(domid) }
    func maxMFN() throws(HostError) -> UInt64 { try inner.maxMFN() }
    func sharedInfoPage(_ domid: DomID, frame: UInt64) throws(HostError) -> [UInt8] { try inner.sharedInfoPage(domid, frame: frame) }
    func mapFrames(_ domid: DomID, _ mfns: UnsafeBufferPointer<UInt64>) throws(HostError) -> FrameMapping {
        lock.lock()
        recorded.append(Array(mfns))
        lock.unlock()
        return try inner.mapFrames(domid, mfns)
    }
    func mapM2P(maxMFN: UInt64) throws(HostError) -> M2PMapping { try inner.mapM2P(maxMFN: maxMFN) }
    func domainName(_ domid: DomID) -> String? { inner.domainName(domid) }
}

import Foundation
import Logging
import P2MEngine
import P2MXen

/// Item 5: on a real Xen host, xenp2m's full check of one guest against
/// `xen-mfndump dump-p2m` of the same guest, alternated in the same run so both see the
/// same guest, the same dom0 and the same caches.
struct XenBench {
    var domid: DomID
    var repeats: Int
    var mfndump: String

    func run() throws {
        var logger = Logger(label: "xenp2m-bench")
        logger.logLevel = .warning
        let host: XenHost
        do { host = try XenHost.open(logger: logger) } catch { throw BenchError("cannot open Xen: \(error)") }
        guard FileManager.default.isExecutableFile(atPath: mfndump) else {
            throw BenchError("no xen-mfndump at \(mfndump) (Debian: xen-utils-4.17; pass --mfndump PATH)")
        }
        let scanner = P2MScanner(host: host)
        let clock = ContinuousClock()
        var scanBest = Duration.seconds(1e9), dumpBest = Duration.seconds(1e9)
        var report: P2MReport?
        for _ in 0..<max(1, repeats) {
            let t0 = clock.now
            let r = scanner.scan(domid)
            scanBest = min(scanBest, clock.now - t0)
            guard r.severity != .error else { throw BenchError("xenp2m could not scan domain \(domid): \(r.error ?? "error")") }
            report = r

            let p = Process()
            p.executableURL = URL(fileURLWithPath: mfndump)
            p.arguments = ["dump-p2m", "\(domid)"]
            // Its text goes to /dev/null: the comparison is of the work, not of a terminal.
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            let t1 = clock.now
            try p.run()
            p.waitUntilExit()
            dumpBest = min(dumpBest, clock.now - t1)
            guard p.terminationStatus == 0 else { throw BenchError("xen-mfndump dump-p2m \(domid) exited \(p.terminationStatus)") }
        }
        let r = report!
        print("\n## 5. real Xen: domain \(domid), \(r.maxPfn?.effective ?? 0) pfns (\(r.populated) populated), primary format \(r.primaryFormat?.rawValue ?? "none"), best of \(max(1, repeats))")
        print(pad("tool", 34) + "seconds")
        print(pad("xenp2m full check (walk + checks)", 34) + String(format: "%.4f", ns(scanBest) / 1e9))
        print(pad("xen-mfndump dump-p2m > /dev/null", 34) + String(format: "%.4f", ns(dumpBest) / 1e9))
        print("ratio xenp2m/xen-mfndump = \(String(format: "%.2f", ns(scanBest) / ns(dumpBest)))")
    }
}

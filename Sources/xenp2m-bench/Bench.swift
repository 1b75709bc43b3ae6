import ArgumentParser
import CBenchReference
import Foundation
import P2MEngine
import P2MSimulator

/// Benchmarks for the engine. Every number is measured in the same run as its baseline,
/// and reported as a ratio; nothing here asserts on time.
@main
struct XenP2MBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenp2m-bench",
        abstract: "Measure xenp2m's P2M check against a C reference loop, memory use and map calls.")

    @Flag(help: "Item 1 on 4 GiB and 64 GiB guests plus item 3 (under a minute).")
    var quick = false

    @Flag(help: "Everything: sizes up to 1 TiB (needs ~8 GiB of RAM), memory, scaling curve.")
    var full = false

    @Option(help: "Interleaved rounds per size (at least 7): each round times the C reference, the engine and the floor once, in a rotating order.")
    var repeats = 9

    @Option(help: "Frames per map call.")
    var batchFrames = 256

    @Flag(help: "Item 4 only: the real xenp2md on a large simulated fleet.")
    var fleet = false

    @Option(help: "xenp2md binary for --fleet (default: next to this binary).")
    var daemon: String?

    @Option(help: "Guests in the --fleet run.")
    var fleetGuests = 200

    @Option(help: "GiB populated over all --fleet guests.")
    var fleetGib: UInt64 = 2048

    @Option(help: "Poll cycles measured in the --fleet run.")
    var fleetCycles = 3

    @Flag(help: "--fleet: the simulator copies every mapped frame (the old mode) instead of lending it.")
    var fleetCopy = false

    @Option(help: "--fleet: the daemon's poll.full_verify_seconds (0: every poll verifies every entry).")
    var fleetFullVerify: Double = 0

    @Option(help: "--fleet: the poll interval the full-verify period is divided by (the bench itself polls back to back).")
    var fleetInterval: Double = 60

    @Option(help: "Item 5 only, on a real Xen host (root): xenp2m's full check of this domain vs xen-mfndump dump-p2m and vs mapping the leaves alone.")
    var xen: UInt32?

    @Option(help: "xen-mfndump for --xen.")
    var mfndump = "/usr/lib/xen-4.17/bin/xen-mfndump"

    mutating func run() throws {
        if let xen {
            try XenBench(domid: xen, repeats: max(repeats, 7), batchFrames: batchFrames, mfndump: mfndump).run()
            return
        }
        if fleet {
            let exe = daemon ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("xenp2md").path
            try FleetBench(daemon: exe, guests: fleetGuests, totalGiB: fleetGib, clients: 50, cycles: fleetCycles,
                           fullVerifySeconds: fleetFullVerify, intervalSeconds: fleetInterval, zeroCopy: !fleetCopy).run()
            return
        }
        if !quick && !full { quick = true }
        repeats = max(7, repeats)
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB; batch_frames=\(batchFrames); load average \(loadAverage())")
        var sizes: [(String, UInt64, PublishedFormats)] = [("4 GiB", 4, .both), ("64 GiB", 64, .both)]
        if full { sizes += [("512 GiB", 512, .both), ("1 TiB", 1024, .listOnly)] }

        print("\n## 1. check cost per pfn: engine vs C reference vs floor, \(repeats) interleaved rounds on the same leaf buffers and M2P")
        print("   (thread CPU ns/pfn: median of the rounds; ratios: median of the per-round ratios [min-max])")
        print(pad("guest", 9) + pad("pfns", 11) + pad("C", 7) + pad("engine", 8) + pad("floor", 7) + pad("engine/C", 20)
              + pad("engine/floor", 20) + pad("scan ns/pfn", 12) + "map calls (bound)")
        var worst = 0.0
        for (label, gib, formats) in sizes {
            let r = try measureCheck(gib: gib, formats: formats)
            worst = max(worst, r.engineOverC.median)
            print(pad(label, 9) + pad("\(r.pfns)", 11) + pad(f(r.cNs), 7) + pad(f(r.engineNs), 8) + pad(f(r.floorNs), 7)
                  + pad(r.engineOverC.text, 20) + pad(r.engineOverFloor.text, 20)
                  + pad(f(r.scanNs), 12) + "\(r.mapCalls) (\(r.mapBound)), frames \(r.frames)")
        }
        print("load average after: \(loadAverage())")

        if full {
            try memory()
            try scaling()
        }
        print("ratio engine/c_reference = \(String(format: "%.2f", worst))")
    }

    /// Median and range of per-round ratios.
    struct Spread {
        var values: [Double]
        var median: Double { XenP2MBench.median(values) }
        var text: String { "\(f(median)) [\(f(values.min() ?? .nan))-\(f(values.max() ?? .nan))]" }
    }

    struct CheckResult {
        var pfns: UInt64
        var cNs: Double
        var engineNs: Double
        var floorNs: Double
        var engineOverC: Spread
        var engineOverFloor: Spread
        var scanNs: Double
        var mapCalls: UInt64
        var mapBound: UInt64
        var frames: UInt64
    }

    func measureCheck(gib: UInt64, formats: PublishedFormats) throws -> CheckResult {
        let pfns = gib << 18
        let host = SimulatedHost(frames: pfns + pfns / 256 + (1 << 16))
        try host.createGuest(GuestSpec(domid: 1, name: "bench", maxPfn: pfns, populated: [0..<pfns], formats: formats))
        let leaves = host.leafFrames(1)
        let maxMFN = try host.maxMFN()
        let m2p = try host.mapM2P(maxMFN: maxMFN)
        let mapping = try leaves.withUnsafeBufferPointer { buf throws(HostError) in try host.mapFrames(1, buf) }
        precondition(mapping.errors.allSatisfy { $0 == 0 })
        let entries = mapping.base.assumingMemoryBound(to: UInt64.self)
        // One closure per contender, run once per round in a rotating order, so load that
        // comes and goes lands on all three alike and each round yields its own ratios.
        // Each contender is timed in this thread's CPU time, not wall time: under load a
        // 60 ms run is preempted a varying number of times, and wall time would measure
        // the scheduler. What load still does (caches, memory bandwidth taken by the other
        // jobs) the interleaving spreads over all three.
        func timeC() -> Double {
            // C allocates and clears its bitmap inside the timed region, as the engine does.
            let t0 = threadCPUNs()
            let words = Int(maxMFN >> 6) + 1
            let bitmap = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
            bitmap.initialize(repeating: 0, count: words)
            var counts = xp2m_ref_counts()
            xp2m_ref_check64(entries, pfns, m2p.entries.baseAddress, UInt64(m2p.entries.count), maxMFN, bitmap, &counts)
            bitmap.deallocate()
            let t = threadCPUNs() - t0
            precondition(counts.valid == pfns, "C reference disagrees with the simulator")
            return t
        }
        func timeEngine() -> Double {
            let t0 = threadCPUNs()
            let r = EntryCheckKernel.run(leaves: mapping.base, leafCount: leaves.count, entries: pfns, width: .bits64,
                                         maxMFN: maxMFN, m2p: m2p.entries)
            let t = threadCPUNs() - t0
            precondition(r.counts.valid == pfns && r.findings == 0, "engine disagrees with the C reference")
            return t
        }
        var sink: UInt64 = 0
        func timeFloor() -> Double {
            let t0 = threadCPUNs()
            sink &+= xp2m_floor64(entries, pfns, m2p.entries.baseAddress, UInt64(m2p.entries.count))
            return threadCPUNs() - t0
        }
        let contenders = [timeC, timeEngine, timeFloor]
        var c: [Double] = [], e: [Double] = [], fl: [Double] = [], scan: [Double] = []
        var report: P2MReport?
        for round in 0..<repeats {
            var t = [Double](repeating: 0, count: 3)
            for k in 0..<3 {
                let which = (k + round) % 3
                t[which] = contenders[which]()
            }
            c.append(t[0]); e.append(t[1]); fl.append(t[2])

            var opts = ScanOptions()
            opts.batchFrames = batchFrames
            let t2 = threadCPUNs()
            let rep = P2MScanner(host: host, options: opts).scan(1)
            scan.append(threadCPUNs() - t2)
            precondition(rep.severity == .ok, "scan of a healthy guest found \(rep.findings)")
            report = rep
        }
        precondition(sink != 0x5eed, "unreachable: keeps the floor's loads alive")
        let rep = report!
        let fmt = rep.primaryFormat == .linearList ? rep.linearList! : rep.tree!
        let bound = (fmt.leafFrames + UInt64(batchFrames) - 1) / UInt64(batchFrames) + UInt64(fmt.levels)
            + (rep.tree != nil && rep.linearList != nil ? UInt64(rep.tree!.levels) : 0)
        let n = Double(pfns)
        return CheckResult(pfns: pfns, cNs: Self.median(c) / n, engineNs: Self.median(e) / n, floorNs: Self.median(fl) / n,
                           engineOverC: Spread(values: zip(e, c).map { $0 / $1 }),
                           engineOverFloor: Spread(values: zip(e, fl).map { $0 / $1 }),
                           scanNs: Self.median(scan) / n, mapCalls: rep.stats.mapCalls, mapBound: bound,
                           frames: rep.stats.framesMapped)
    }

    static func median(_ v: [Double]) -> Double {
        guard !v.isEmpty else { return .nan }
        let s = v.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// Item 2: the scanner's own peak memory, from the kernel's peak-RSS counter reset
    /// just before the scan (the simulated host's memory is resident before it starts).
    func memory() throws {
        print("\n## 2. peak RSS growth of one scan (the scanner's own memory)")
        print(pad("guest", 26) + pad("host frames", 13) + pad("MFN bitmap", 12) + pad("peak growth", 13) + "growth - bitmap")
        for (label, gib, populated, formats) in [("4 GiB full", UInt64(4), UInt64(4), PublishedFormats.both),
                                                  ("1 TiB, 4 GiB populated", 1024, 4, .listOnly),
                                                  ("1 TiB full (list only)", 1024, 1024, .listOnly)] {
            let pfns = gib << 18
            let host = SimulatedHost(frames: (populated << 18) + pfns / 256 + (1 << 16))
            try host.createGuest(GuestSpec(domid: 1, name: "m", maxPfn: pfns, populated: [0..<(populated << 18)], formats: formats))
            let bitmap = (try host.maxMFN() >> 3) + 8
            resetPeakRSS()
            let before = rssBytes()
            let r = P2MScanner(host: host).scan(1)
            precondition(r.severity == .ok)
            let growth = peakRSSBytes() - before
            print(pad(label, 26) + pad("\(host.frameCount)", 13) + pad(mib(bitmap), 12) + pad(mib(growth), 13)
                  + mib(growth > bitmap ? growth - bitmap : 0))
        }
    }

    /// Item 6: cost against the number of guests (64 MiB each).
    func scaling() throws {
        print("\n## 6. scaling: scan every guest once")
        print(pad("guests", 8) + pad("populated pfns", 16) + pad("time", 12) + pad("ns/pfn", 9) + "peak RSS growth")
        for n in [1, 10, 100, 1000] {
            let host = SimulatedHost(frames: UInt64(n) * (1 << 14) + UInt64(n) * 64 + (1 << 16))
            for d in 0..<n {
                try host.createGuest(.linux(domid: DomID(d + 1), name: "g\(d)", memoryMiB: 64))
            }
            let scanner = P2MScanner(host: host)
            resetPeakRSS()
            let before = rssBytes()
            let clock = ContinuousClock()
            let t0 = clock.now
            for d in 0..<n { precondition(scanner.scan(DomID(d + 1)).severity == .ok) }
            let t = clock.now - t0
            let pfns = UInt64(n) << 14
            print(pad("\(n)", 8) + pad("\(pfns)", 16) + pad("\(f(ns(t) / 1e6)) ms", 12) + pad(f(ns(t) / Double(pfns)), 9)
                  + mib(peakRSSBytes() - before))
        }
    }
}

func ns(_ d: Duration) -> Double {
    let c = d.components
    return Double(c.seconds) * 1e9 + Double(c.attoseconds) / 1e9
}

func f(_ v: Double) -> String { String(format: "%.2f", v) }
func mib(_ b: UInt64) -> String { String(format: "%.1f MiB", Double(b) / 1048576) }
func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }

func statusField(_ name: String) -> UInt64 {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix(name + ":") {
        let digits = line.dropFirst(name.count + 1).filter(\.isNumber)
        return (UInt64(digits) ?? 0) * 1024
    }
    return 0
}

/// The 1, 5 and 15 minute load averages, as uptime prints them.
func loadAverage() -> String {
    guard let s = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return "unknown" }
    return s.split(separator: " ").prefix(3).joined(separator: " ")
}

/// CPU time of the calling thread, in nanoseconds.
func threadCPUNs() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) * 1e9 + Double(ts.tv_nsec)
}

func rssBytes() -> UInt64 { statusField("VmRSS") }
func peakRSSBytes() -> UInt64 { statusField("VmHWM") }
/// Writing 5 to clear_refs resets the peak-RSS counter (Linux >= 4.0).
func resetPeakRSS() { try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8) }

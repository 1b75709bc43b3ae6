import Foundation
import Testing
@testable import P2MEngine
@testable import P2MSimulator

@Suite("Incremental verification: the same reports, every fault within its stated latency")
struct IncrementalTests {
    static let period = 4

    static func scanner(_ h: SimulatedHost, period: Int = period, _ configure: (inout ScanOptions) -> Void = { _ in }) -> P2MScanner {
        var o = ScanOptions()
        o.verifyPeriodScans = period
        configure(&o)
        return P2MScanner(host: h, options: o)
    }

    @Test("an unchanged guest reports exactly what a full scan reports, and reuses its leaves")
    func sameReportAsFullScan() throws {
        let h = try FaultTests.guest()
        let full = scan(h, 7)
        #expect(full.stats.leavesReused == nil)
        let s = Self.scanner(h)
        // Leaf slots naming the shared missing leaf are not remembered, only private leaves.
        let privateLeaves = UInt64(Set(h.leafFrames(7)).count - 1)
        for k in 0..<(2 * Self.period) {
            let r = s.scan(7)
            #expect(r.entries == full.entries && r.populated == full.populated && r.pfnMap == full.pfnMap, "scan \(k)")
            #expect(r.findings.isEmpty && r.severity == full.severity && r.migration == full.migration, "scan \(k)")
            #expect(r.stats.framesMapped == full.stats.framesMapped, "every leaf is still read")
            if k == 0 {
                #expect(r.stats.leavesReused == 0)
            } else {
                // All private leaves but this scan's share.
                let reused = r.stats.leavesReused ?? 0
                #expect(reused >= privateLeaves * UInt64(Self.period - 1) / UInt64(Self.period) - 1 && reused < privateLeaves, "scan \(k): \(r.stats)")
            }
        }
    }

    @Test("over one period every leaf is re-verified against the M2P")
    func everyLeafWithinOnePeriod() throws {
        let h = try FaultTests.guest()
        let s = Self.scanner(h)
        _ = s.scan(7)
        let privateLeaves = UInt64(Set(h.leafFrames(7)).count - 1) // minus the shared missing leaf
        var checked: UInt64 = 0
        for _ in 0..<Self.period {
            checked += privateLeaves - s.scan(7).stats.leavesReused!
        }
        #expect(checked == privateLeaves)
    }

    @Test("guest changes its P2M between scans (balloon): counts follow at the next scan")
    func balloonSeenAtOnce() throws {
        let h = try FaultTests.guest()
        let s = Self.scanner(h)
        _ = s.scan(7)
        _ = s.scan(7)
        let before = try #require(h.populatedPages(7))
        try h.balloon(7, toPages: before - 3000)
        let r = s.scan(7)
        #expect(r.findings.isEmpty, "\(r.findings)")
        #expect(r.populated == scan(h, 7).populated)
        #expect(r.populated == r.totPages)
    }

    @Test("an operator's scan verifies every entry")
    func verifyAllChecksEverything() throws {
        let h = try FaultTests.guest()
        let s = Self.scanner(h)
        _ = s.scan(7)
        try h.inject(.m2pMismatch(pfn: 1234), into: 7)
        let r = s.scan(7, verifyAll: true)
        #expect(r.stats.leavesReused == 0)
        #expect(kinds(r) == [.m2pMismatch])
    }

    @Test("probing data frames turns incremental mode off")
    func probeIsAlwaysFull() throws {
        let h = try FaultTests.guest()
        let s = Self.scanner(h) { $0.probeDataFrames = true }
        _ = s.scan(7)
        #expect(s.scan(7).stats.leavesReused == nil)
    }

    /// The stated latency of each expected finding of a fault injected between scans.
    static func latency(of kind: FindingKind, for fault: SimFault) -> Int {
        switch (fault, kind) {
        case (.m2pMismatch, _): return DetectionLatency.m2pOnlyChange(period: period)
        case (_, .duplicateMfn): return DetectionLatency.duplicateAttribution
        default: return DetectionLatency.p2mChange
        }
    }

    @Test("each injectable fault is reported within its stated latency and stays reported", arguments: FaultTests.cases.indices)
    func faultWithinLatency(_ i: Int) throws {
        let (fault, formats) = (FaultTests.cases[i].fault, FaultTests.cases[i].formats)
        // Seen only by probing data frames, which always verifies everything.
        if case .unmappableDataFrame = fault { return }
        let h = try FaultTests.guest(formats)
        let s = Self.scanner(h)
        // A warm memo in an arbitrary phase of its period, every leaf remembered clean.
        for _ in 0..<(Self.period + i % Self.period) { #expect(s.scan(7).findings.isEmpty) }
        try h.inject(fault, into: 7)
        var firstSeen: [FindingKind: Int] = [:]
        let horizon = 2 * Self.period
        for k in 1...horizon {
            let r = s.scan(7)
            for kind in kinds(r) where firstSeen[kind] == nil { firstSeen[kind] = k }
            for (kind, at) in firstSeen where at < k {
                #expect(kinds(r).contains(kind), "\(fault): \(kind.rawValue) seen at scan \(at) but gone at scan \(k)")
            }
            if k == horizon { #expect(kinds(r) == fault.expectedFindings, "\(fault): \(kinds(r))") }
        }
        for kind in fault.expectedFindings {
            let at = try #require(firstSeen[kind], "\(fault): \(kind.rawValue) never reported")
            #expect(at <= Self.latency(of: kind, for: fault), "\(fault): \(kind.rawValue) first at scan \(at)")
        }
    }

    /// The owner's leaf before the impostor's (pfn 9000 takes pfn 100's frame) and after it
    /// (pfn 100 takes pfn 9000's), at every phase of the period: m2p_mismatch at the next
    /// scan, duplicate_mfn within DetectionLatency.duplicateAttribution, then every scan.
    @Test("a frame newly named by pfns in two leaves: duplicate_mfn within its latency and stays, either order",
          arguments: [(UInt64(9000), UInt64(100)), (100, 9000)])
    func crossLeafDuplicate(impostor: UInt64, owner: UInt64) throws {
        for phase in 0..<Self.period {
            let h = try FaultTests.guest()
            let s = Self.scanner(h)
            for _ in 0..<(Self.period + phase) { _ = s.scan(7) }
            // As FaultTests.duplicateBlamesTheImpostor: the impostor's entry takes the owner's
            // frame in either order (the simulator's own fault needs the owner below).
            h.lock.lock()
            let d = h.domains[7]!
            let own = h.entry(d, impostor)
            h.store(d.leafFrames[Int(impostor / 512)], Int(impostor % 512), h.entry(d, owner), bytes: 8)
            h.freeFrame(own)
            h.lock.unlock()
            var seen: Int?
            for k in 1...(2 * Self.period) {
                let r = s.scan(7)
                if k == 1 { #expect(r.finding(.m2pMismatch)?.samples.first?.pfn == impostor, "phase \(phase): \(r.findings)") }
                let dup = r.finding(.duplicateMfn) != nil
                if dup, seen == nil { seen = k }
                if let at = seen, at < k { #expect(dup, "phase \(phase): duplicate_mfn seen at scan \(at), gone at \(k)") }
            }
            let at = try #require(seen, "phase \(phase): duplicate_mfn never reported")
            #expect(at <= DetectionLatency.duplicateAttribution, "phase \(phase): first at scan \(at)")
        }
    }

    @Test("a P2M entry rewritten to another guest frame is seen at the next scan, whichever leaf is due")
    func entryRewriteNextScan() throws {
        for phase in 0..<Self.period {
            let h = try FaultTests.guest()
            let s = Self.scanner(h)
            for _ in 0..<(Self.period + phase) { _ = s.scan(7) }
            try h.inject(.duplicateMfn(pfn: 9000, sameAs: 100), into: 7)
            let r = s.scan(7)
            #expect(r.finding(.m2pMismatch)?.samples.first?.pfn == 9000, "phase \(phase): \(r.findings)")
        }
    }

    @Test("the zero-copy simulator gives the same reports and keeps freed pages while lent")
    func zeroCopySameReports() throws {
        let copying = try FaultTests.guest()
        let lending = SimulatedHost(memoryGiB: 4, zeroCopy: true)
        var spec = GuestSpec.linux(domid: 7, name: "victim", memoryMiB: 1100, maxMiB: 2048)
        spec.populated = [0..<(1100 << 8) - 100]
        try lending.createGuest(spec)
        for h in [copying, lending] { try h.inject(.duplicateMfn(pfn: 5001, sameAs: 5000), into: 7) }
        let a = scan(copying, 7), b = scan(lending, 7)
        #expect(a.entries == b.entries && a.findings == b.findings && a.pfnMap == b.pfnMap)
        #expect(lending.framesLent > 0 && lending.framesCopied == 0 && copying.framesLent == 0)
        #expect((lending.backendCPUSeconds ?? -1) >= 0)

        // A mapping held across the domain's destruction still reads the old page.
        let leaf = lending.leafFrames(7)[0]
        let m = try [leaf].withUnsafeBufferPointer { (b) throws(HostError) in try lending.mapFrames(7, b) }
        let first = m.page(0)!.load(as: UInt64.self)
        lending.destroy(7)
        #expect(m.page(0)!.load(as: UInt64.self) == first)
    }
}

import Foundation
import Testing
import P2MTestSupport
@testable import P2MEngine
@testable import P2MSimulator

@Suite("Injected faults: each produces exactly its finding")
struct FaultTests {
    /// A 64-bit guest, both formats: 1100 MiB populated, 2 GiB maxmem (partly missing leaves).
    static func guest(_ formats: PublishedFormats = .both) throws -> SimulatedHost {
        let h = host(4)
        var spec = GuestSpec.linux(domid: 7, name: "victim", memoryMiB: 1100, maxMiB: 2048, formats: formats)
        // A partly populated leaf so an unpopulated pfn sits in a private leaf.
        spec.populated = [0..<(1100 << 8) - 100]
        try h.createGuest(spec)
        return h
    }

    static let cases = FaultCatalogue.faults64(memoryMiB: 1100, maxMiB: 2048)

    @Test("fault -> exactly its finding kinds", arguments: cases)
    func exactlyItsFinding(_ entry: FaultCatalogue.Entry) throws {
        let (fault, formats) = (entry.fault, entry.formats)
        let h = try Self.guest(formats)
        // An unmappable leaf is also an unmappable RAM page (P2M pages are guest RAM),
        // which a data-frame probe would report as well: probe everything else.
        let probe: Bool
        if case .unmappableLeaf = fault { probe = false } else { probe = true }
        let clean = scan(h, 7) { $0.probeDataFrames = probe }
        #expect(clean.findings.isEmpty, "before injecting: \(clean.findings)")
        try h.inject(fault, into: 7)
        let r = scan(h, 7) { $0.probeDataFrames = probe }
        let expected = try #require(fault.expectedFinding)
        #expect(kinds(r) == fault.expectedFindings, "\(fault): \(r.findings.map { "\($0.kind.rawValue)=\($0.count) \($0.samples.first.map { "\($0)" } ?? "")" })")
        #expect(r.severity == expected.severity)
        #expect(r.finding(expected)?.samples.isEmpty == false)
        if expected.severity == .critical { #expect(r.migration.verdict == .broken) }
    }

    @Test func entryFaultsNameThePfn() throws {
        let h = try Self.guest()
        try h.inject(.m2pMismatch(pfn: 1234), into: 7)
        try h.inject(.duplicateMfn(pfn: 5001, sameAs: 5000), into: 7)
        let r = scan(h, 7)
        #expect(r.finding(.m2pMismatch)?.samples.map(\.pfn) == [1234, 5001])
        #expect(r.finding(.m2pMismatch)?.samples.first?.expected == 1234)
        #expect(r.finding(.duplicateMfn)?.samples.first?.pfn == 5001)
        #expect(r.finding(.m2pMismatch)?.count == 2)
        #expect(r.entries.faulty == 2)
        // The map shows where: the cell holding pfn 1234 is marked faulty.
        let map = try #require(r.pfnMap)
        #expect(map.masks[Int(1234 / map.pfnsPerCell)] & PfnMap.Bit.faulty != 0)
        #expect(map.masks.enumerated().filter { $0.element & PfnMap.Bit.faulty != 0 }.count <= 2)
    }

    /// Whichever of the two comes first in the P2M, the pfn that does not own the frame
    /// per the M2P is the one flagged, and the owner stays valid.
    @Test(arguments: [(UInt64(5001), UInt64(5000)), (5000, 5001)])
    func duplicateBlamesTheImpostor(impostor: UInt64, owner: UInt64) throws {
        let h = try Self.guest()
        h.lock.lock()
        let d = h.domains[7]!
        let frame = h.entry(d, owner)
        let own = h.entry(d, impostor)
        h.store(d.leafFrames[Int(impostor / 512)], Int(impostor % 512), frame, bytes: 8)
        h.freeFrame(own)
        h.lock.unlock()
        let r = scan(h, 7)
        #expect(kinds(r) == [.m2pMismatch, .duplicateMfn])
        #expect(r.finding(.m2pMismatch)?.samples.map(\.pfn) == [impostor])
        #expect(r.count(.duplicateMfn) == 1)
        #expect(r.entries.faulty == 1)
    }

    @Test func frameUnmappableNeedsProbe() throws {
        let h = try Self.guest()
        try h.inject(.unmappableDataFrame(pfn: 4242), into: 7)
        #expect(scan(h, 7).findings.isEmpty)
        #expect(kinds(scan(h, 7) { $0.probeDataFrames = true }) == [.frameUnmappable])
    }

    @Test func domainVanishingMidScanIsAnError() throws {
        let h = try Self.guest()
        try h.inject(.vanishAfterMapCalls(2), into: 7)
        let r = scan(h, 7)
        #expect(r.severity == .error)
        #expect(r.error?.contains("vanished") == true)
        #expect(r.migration.verdict == .unknown)
        #expect(h.domids.isEmpty)
    }

    @Test func allMapsFailingIsAnErrorNotACrash() throws {
        let h = try Self.guest()
        try h.inject(.allMapsFail, into: 7)
        let r = scan(h, 7)
        #expect(r.severity == .error)
        #expect(r.error?.contains("EFAULT") == true)
    }

    @Test func unknownDomainIsAnError() {
        let r = scan(host(1), 42)
        #expect(r.severity == .error)
        #expect(r.error?.contains("does not exist") == true)
    }

    @Test func hvmAndPvhAreNotApplicable() throws {
        let h = host(1)
        var spec = GuestSpec.linux(domid: 2, name: "hvm", memoryMiB: 16)
        spec.type = .hvm
        try h.createGuest(spec)
        spec.domid = 3
        spec.type = .pvh
        try h.createGuest(spec)
        for d in [DomID(2), 3] {
            let r = scan(h, d)
            #expect(r.severity == .notApplicable)
            #expect(r.migration.verdict == .notApplicable)
            #expect(r.findings.isEmpty)
        }
    }
}

@Suite("The fault catalogue")
struct FaultCatalogueTests {
    @Test("every fault case is catalogued, or excluded with a reason, and its entries are of that case", arguments: FaultCase.allCases)
    func everyCase(_ c: FaultCase) {
        let entries = FaultCatalogue.faults64(memoryMiB: 1100, maxMiB: 2048).filter { FaultCase($0.fault) == c }
        if let why = FaultCatalogue.exclusion(c) {
            #expect(entries.isEmpty, "\(c) is excluded (\(why)) but catalogued")
        } else {
            #expect(!entries.isEmpty, "\(c) has no entry and no reason")
            for e in entries { #expect(e.fault.expectedFinding != nil, "\(e) has no finding") }
        }
    }
}

import Foundation
import Testing
@testable import P2MEngine
@testable import P2MSimulator
import P2MTestSupport

@Suite("Hostile guests: structures that must not crash, loop or allocate without bound")
struct HostileTests {
    func guest(_ formats: PublishedFormats = .both) throws -> SimulatedHost {
        let h = host(2)
        try h.createGuest(.linux(domid: 4, name: "evil", memoryMiB: 64, maxMiB: 512, formats: formats))
        return h
    }

    @Test func fllPointingAtItself() throws {
        let h = try guest(.treeOnly)
        h.lock.lock()
        let d = h.domains[4]!
        h.store(d.fll, 0, d.fll, bytes: 8)
        h.lock.unlock()
        let r = scan(h, 4)
        #expect(kinds(r).contains(.structureCycle))
        #expect(r.severity == .critical)
    }

    @Test func midPageNamingTheFll() throws {
        let h = try guest(.treeOnly)
        h.lock.lock()
        let d = h.domains[4]!
        h.store(d.mids[0], 3, d.fll, bytes: 8)
        h.lock.unlock()
        #expect(kinds(scan(h, 4)).contains(.structureCycle))
    }

    @Test func pageTablePointingBackToRoot() throws {
        let h = try guest(.listOnly)
        try h.inject(.pageTableCycle(leaf: 0), into: 4)
        let r = scan(h, 4)
        #expect(kinds(r) == [.structureCycle])
        #expect(r.linearList?.walked == false)
    }

    @Test func maxPfnOfTwoToThe52() throws {
        let h = try guest()
        try h.inject(.publishedMaxPfn(1 << 52), into: 4)
        let r = scan(h, 4)
        #expect(kinds(r).contains(.maxPfnImplausible))
        #expect(r.maxPfn!.effective < 1 << 24)
    }

    @Test func vaddrAtTheTopOfTheAddressSpace() throws {
        let h = try guest()
        try h.inject(.listVaddr(0xffff_ffff_ffff_f000), into: 4)
        let r = scan(h, 4)
        #expect(kinds(r) == [.listVaddrInvalid])
        #expect(r.primaryFormat == .tree)
    }

    @Test func everyEntryTheSameMfn() throws {
        let h = try guest()
        h.lock.lock()
        let d = h.domains[4]!
        let first = h.entry(d, 0)
        for k in 0..<32 { for i in 0..<512 { h.store(d.leafFrames[k], i, first, bytes: 8) } }
        h.lock.unlock()
        let r = scan(h, 4)
        #expect(r.count(.duplicateMfn) == 32 * 512 - 1)
        #expect(r.finding(.duplicateMfn)!.samples.count == 16)
        #expect(r.severity == .critical)
    }

    @Test func generationOddForever() throws {
        let h = try guest()
        try h.inject(.generationAlwaysMoving, into: 4)
        let r = scan(h, 4) { $0.generationRetries = 5 }
        #expect(kinds(r) == [.p2mUnstable])
        #expect(r.stats.retries == 5)
    }

    @Test func treeBeyondItsCapacity() throws {
        // A 64-bit guest larger than 512 GiB that still publishes a tree.
        let h = host(2)
        try h.createGuest(GuestSpec(domid: 4, name: "toobig", maxPfn: (600 << 18), populated: [0..<4096], formats: .both))
        let r = scan(h, 4)
        #expect(kinds(r) == [.treeCapacityExceeded])
        #expect(r.tree?.capacityPfns == 1 << 27)
        #expect(r.severity == .warning)
        #expect(r.migration.verdict == .needsMigrationV2)
    }

    /// What Linux did on real Xen (memory 47 GiB, maxmem 600 GiB, xen_512gb_limit=0): Xen's
    /// max_pages is the memory plus slack while the P2M is sized for maxmem. That is a
    /// large guest, not an implausible max_pfn.
    @Test func bigBalloonRoomIsNotImplausible() throws {
        let h = host(2)
        var spec = GuestSpec(domid: 4, name: "roomy", maxPfn: 135_528_448, populated: [0..<65536], formats: .both)
        spec.maxPages = 70_000
        try h.createGuest(spec)
        let r = scan(h, 4)
        #expect(kinds(r) == [.treeCapacityExceeded])
        #expect(r.maxPfn?.effective ?? 0 > 0)
        #expect(r.migration.verdict == .needsMigrationV2)
    }

    @Test func everyFrameRefusesToMap() throws {
        let h = try guest()
        try h.inject(.allMapsFail, into: 4)
        #expect(scan(h, 4).severity == .error)
    }

    @Test func randomGarbageInStructurePages() throws {
        // Overwrite every structure page with random words: the walk must end with
        // findings, never a trap or a hang.
        for seed in UInt64(1)...20 {
            var rng = SplitMix(seed: seed)
            let h = try guest(Bool.random(using: &rng) ? .both : .listOnly)
            h.lock.lock()
            let d = h.domains[4]!
            // Only frames the walk must read: garbage in an unreferenced page is harmless.
            var victims = [d.fll, d.ptRoot] + d.leafFrames.prefix(4)
            if d.hasTree { victims.append(d.mids[0]) }
            victims = victims.filter { $0 != 0 }
            let target = victims[Int.random(in: 0..<victims.count, using: &rng)]
            for i in 0..<512 {
                let v: UInt64
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: v = UInt64.random(in: 0..<h.frameCount, using: &rng) << 12 | 0x63
                case 1: v = UInt64.random(in: 0..<h.frameCount, using: &rng)
                case 2: v = target << 12 | 0xe3
                default: v = rng.next()
                }
                h.store(target, i, v, bytes: 8)
            }
            h.lock.unlock()
            let r = scan(h, 4)
            #expect(r.severity != .ok, "garbage went unnoticed, seed \(seed)")
            #expect(r.stats.framesMapped < 200_000, "seed \(seed)")
        }
    }
}

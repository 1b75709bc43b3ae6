import Foundation
import Testing
@testable import P2MEngine
@testable import P2MSimulator
import P2MTestSupport

@Suite("Walkers: every format, width and level count")
struct WalkerTests {
    static let layouts: [(GuestWidth, Int, PublishedFormats)] = [
        (.bits64, 4, .both), (.bits64, 5, .both), (.bits32, 3, .both), (.bits64, 4, .listOnly), (.bits32, 3, .treeOnly),
    ]

    @Test("tree and linear list recover the guest's P2M entry for entry", arguments: 0..<5)
    func recoversEntries(_ i: Int) throws {
        let (width, levels, formats) = Self.layouts[i]
        let h = host(4)
        var spec = GuestSpec.linux(domid: 3, name: "g", memoryMiB: 96, maxMiB: 300, width: width, formats: formats)
        spec.pagingLevels = width == .bits64 ? levels : 4
        spec.identity = [0x100..<0x180, 0x2000..<0x2400]
        spec.populated = [0..<0x100, 0x180..<0x2000, 0x2400..<(96 << 8)]
        try h.createGuest(spec)
        let truth = h.guestEntries(3, 0..<spec.maxPfn)
        #expect(truth.count == Int(spec.maxPfn))
        if formats != .listOnly {
            #expect(try walkedEntries(h, 3, format: .tree) == truth)
        }
        if formats != .treeOnly {
            let shape: RadixShape = width == .bits64 ? .pageTables(levels: levels) : .pae
            #expect(try walkedEntries(h, 3, format: .linearList, shape: shape) == truth)
        }
        let r = scan(h, 3) { $0.pagingLevels64 = levels }
        #expect(r.findings.isEmpty, "\(r.findings)")
        #expect(r.severity == .ok)
        #expect(r.guestWidthBits == width.bits)
        #expect(r.linearList?.levels == (formats == .treeOnly ? nil : (width == .bits64 ? levels : 3)))
        // Whole identity leaves are Linux's shared all-INVALID identity page: only the
        // partial range carries IDENTITY_FRAME entries.
        #expect(r.entries.identity == 0x80)
        #expect(r.populated == r.totPages)
    }

    /// Builds an N-level MFN tree over the guest's leaf frames inside guest memory and
    /// walks it: the walker is written once for any depth.
    @Test("MFN trees of 2, 3 and 4 levels", arguments: [2, 3, 4], [GuestWidth.bits64, .bits32])
    func anyDepthTree(levels: Int, width: GuestWidth) throws {
        let h = host(2)
        try h.createGuest(.linux(domid: 9, name: "t", memoryMiB: 64, width: width, formats: .listOnly))
        h.lock.lock()
        let d = h.domains[9]!
        let fpp = d.fpp
        var current = d.leafFrames
        for _ in 1..<levels {
            var parents: [UInt64] = []
            for chunk in stride(from: 0, to: current.count, by: fpp) {
                let p = try h.allocFrame(for: 9)
                for (i, m) in current[chunk..<min(current.count, chunk + fpp)].enumerated() { h.store(p, i, m, bytes: width.bytes) }
                parents.append(p)
            }
            current = parents
        }
        let root = current[0]
        let expected = d.leafFrames
        h.lock.unlock()

        let session = HostSession(host: h, domid: 9, batchFrames: 7)
        var findings = FindingCollector(sampleLimit: 4)
        let walker = RadixWalker(shape: .mfnTree(levels: levels, width: width), format: .tree, maxMFN: try h.maxMFN(), session: session)
        let w = try walker.walk(root: root, vpnStart: 0, leafCount: expected.count, trim: false, findings: &findings)
        #expect(findings.isEmpty)
        #expect(w.clean)
        #expect(w.leaves == expected)
        // Level by level, in batches: never one call per frame.
        let interior = (levels - 1)
        #expect(session.stats.mapCalls <= UInt64(interior + expected.count / 7 + interior + 1))
    }

    @Test("random layouts are recovered by both walkers", arguments: 1...12)
    func randomLayouts(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        let width: GuestWidth = Bool.random(using: &rng) ? .bits64 : .bits32
        let maxPfn = UInt64.random(in: 1...(1 << 19), using: &rng)
        var populated: [Range<UInt64>] = []
        var identity: [Range<UInt64>] = []
        var pfn: UInt64 = 0
        while pfn < maxPfn {
            let len = min(maxPfn - pfn, UInt64.random(in: 1...(1 << UInt64.random(in: 1...16, using: &rng)), using: &rng))
            switch Int.random(in: 0..<4, using: &rng) {
            case 0, 1: populated.append(pfn..<(pfn + len))
            case 2: identity.append(pfn..<(pfn + len))
            default: break
            }
            pfn += len
        }
        let formats: [PublishedFormats] = [.both, .listOnly, .treeOnly]
        var spec = GuestSpec(domid: 5, name: "rand\(seed)", width: width, maxPfn: maxPfn, populated: populated, identity: identity,
                             formats: formats[Int.random(in: 0..<3, using: &rng)])
        spec.pagingLevels = width == .bits64 && Bool.random(using: &rng) ? 5 : 4
        let h = host(4)
        try h.createGuest(spec)
        let truth = h.guestEntries(5, 0..<maxPfn)
        if spec.formats != .listOnly { #expect(try walkedEntries(h, 5, format: .tree) == truth, "seed \(seed)") }
        if spec.formats != .treeOnly {
            let shape: RadixShape = width == .bits64 ? .pageTables(levels: spec.pagingLevels) : .pae
            #expect(try walkedEntries(h, 5, format: .linearList, shape: shape) == truth, "seed \(seed)")
        }
        let r = scan(h, 5) { $0.pagingLevels64 = spec.pagingLevels }
        #expect(r.findings.isEmpty, "seed \(seed): \(r.findings)")
        let populatedCount = populated.reduce(0) { $0 + $1.count }
        let identityCount = identity.reduce(0) { $0 + $1.count }
        #expect(r.entries.valid == UInt64(populatedCount), "seed \(seed)")
        #expect(r.entries.identity + r.entries.invalid + r.entries.valid == r.maxPfn!.effective, "seed \(seed)")
        #expect(r.entries.identity <= UInt64(identityCount))
    }
}

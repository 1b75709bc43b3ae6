import Foundation
import Testing
import P2MDumpCore
import P2MTestSupport
@testable import P2MEngine
@testable import P2MSimulator

@Suite("Offline verdict from a dump equals the live verdict on the same guest")
struct OfflineEqualsLiveTests {
    /// Live scan, dump, offline scan of the same guest; both with data-frame probing so
    /// frame_unmappable is in play.
    static func roundTrip(_ h: SimulatedHost, _ domid: DomID, writer: DumpWriter = DumpWriter(), probe: Bool = true)
        throws -> (live: P2MReport, offline: P2MReport, layout: DumpWriter.Layout) {
        let scratch = Scratch()
        let live = scanLive(h, domid, probe: probe)
        let layout = try writer.write(h, domid: domid, to: scratch.path("dom\(domid).core"))
        let offline = try scanCore(layout.path, domid: domid, probe: probe)
        return (live, offline, layout)
    }

    static func guest(width: GuestWidth, formats: PublishedFormats, memoryMiB: UInt64 = 64, maxMiB: UInt64 = 512) throws -> SimulatedHost {
        let h = SimulatedHost(memoryGiB: 4)
        var spec = GuestSpec.linux(domid: 7, name: "victim", memoryMiB: memoryMiB, maxMiB: maxMiB, width: width, formats: formats)
        // A partly populated leaf, so an unpopulated pfn sits in a private leaf.
        spec.populated = [0..<(memoryMiB << 8) - 100]
        spec.identity = [(memoryMiB << 8) + 8192..<(memoryMiB << 8) + 8192 + 3000]
        try h.createGuest(spec)
        return h
    }

    static let matrix: [(GuestWidth, PublishedFormats)] = [
        (.bits64, .both), (.bits64, .listOnly), (.bits64, .treeOnly),
        (.bits32, .both), (.bits32, .listOnly), (.bits32, .treeOnly),
    ]

    @Test("healthy guest, every width and format", arguments: 0..<6)
    func healthy(_ i: Int) throws {
        let (width, formats) = Self.matrix[i]
        let h = try Self.guest(width: width, formats: formats)
        let (live, offline, layout) = try Self.roundTrip(h, 7)
        #expect(live.findings.isEmpty, "\(live.findings)")
        #expect(offline.backend == "core")
        #expect(offline.domid == 7)
        #expect(offline.guestWidthBits == width.bits)
        #expect(Verdict(offline) == expectedOffline(live: live, layout: layout),
                "\n live:     \(Verdict(live))\n offline:  \(Verdict(offline))\n expected: \(expectedOffline(live: live, layout: layout))")
        // The simulator builds the P2M's own pages from guest RAM, as Linux does, so a
        // healthy guest's dump holds no frame outside its P2M: offline equals live.
        #expect(layout.structureFrames == 0)
        #expect(offline.totPages == live.totPages)
        #expect(offline.findings.isEmpty, "\(offline.findings)")
        #expect(offline.severity == .ok)
        #expect(offline.migration.verdict == live.migration.verdict)
        #expect(offline.entries == live.entries)
        #expect(offline.pfnMap == live.pfnMap)
    }

    /// Every catalogued fault on a 64-bit guest of 64 MiB; the large-page fault, which
    /// needs a whole populated 512-leaf chunk, on a guest of 1100 MiB.
    static let faults64 = FaultCatalogue.faults64(memoryMiB: 64, maxMiB: 512)
        + FaultCatalogue.faults64(memoryMiB: 1100, maxMiB: 2048).filter(\.needsWholeChunk)

    @Test("64-bit guest with an injected fault", arguments: faults64)
    func fault64(_ entry: FaultCatalogue.Entry) throws {
        let (fault, formats, big) = (entry.fault, entry.formats, entry.needsWholeChunk)
        let h = try Self.guest(width: .bits64, formats: formats, memoryMiB: big ? 1100 : 64, maxMiB: big ? 2048 : 512)
        try h.inject(fault, into: 7)
        try check(h, fault)
    }

    static let faults32: [(SimFault, PublishedFormats)] = [
        (.m2pMismatch(pfn: 1234), .both),
        (.duplicateMfn(pfn: 5001, sameAs: 5000), .both),
        (.mfnOutOfRange(pfn: 777), .both),
        (.identityMismatch(pfn: (64 << 8) - 50), .both),
        (.unmappableDataFrame(pfn: 4242), .both),
        (.treeListMismatch(pfn: 3000), .both),
        (.zeroFllEntry(index: 0), .treeOnly),
        (.badPteFrame(leaf: 3), .listOnly),
        (.unmappableLeaf(leaf: 4), .both),
        (.sharedLeaf(leaf: 6, sameAs: 2), .both),
        (.pageTableCycle(leaf: 1), .listOnly),
        (.pteNotPresent(leaf: 5), .both),
        (.listVaddr(0xf600_0000), .both),
        (.extraOwnedPages(2), .treeOnly),
    ]

    @Test("32-bit guest with an injected fault", arguments: 0..<14)
    func fault32(_ i: Int) throws {
        let (fault, formats) = Self.faults32[i]
        let h = try Self.guest(width: .bits32, formats: formats)
        try h.inject(fault, into: 7)
        try check(h, fault)
    }

    private func check(_ h: SimulatedHost, _ fault: SimFault) throws {
        let (live, offline, layout) = try Self.roundTrip(h, 7)
        if let k = fault.expectedFinding { #expect(kinds(live).contains(k), "live scan lost its fault \(fault)") }
        let expected = expectedOffline(live: live, layout: layout)
        #expect(Verdict(offline) == expected,
                "\(fault)\n live:     \(Verdict(live))\n offline:  \(Verdict(offline))\n expected: \(expected)")
        switch fault {
        case .m2pMismatch:
            // Xen's M2P is not in the dump: the pfn's entry round-trips through .xen_p2m.
            #expect(offline.finding(.m2pMismatch) == nil)
        case .unmappableDataFrame(let pfn):
            // xl skipped the frame it could not map (and padded): the pfn has no frame offline.
            #expect(layout.padding >= 1)
            #expect(offline.finding(.m2pMismatch)?.samples.first?.pfn == pfn)
            #expect(offline.finding(.m2pMismatch)?.samples.first?.found == UInt64.max)
        case .mfnOutOfRange:
            // xl skips entries above the host's max MFN; the page count is padded to tot_pages.
            #expect(layout.padding == 1)
            #expect(offline.finding(.mfnOutOfRange)?.count == 1)
        case .generationAlwaysMoving:
            #expect(live.finding(.p2mUnstable) != nil)
            #expect(offline.finding(.p2mUnstable) == nil)
        case .extraOwnedPages(let n):
            // The frames xl could not find in the P2M are padding; tot_pages keeps them.
            #expect(layout.padding == n)
            #expect(offline.finding(.populatedMismatch)?.samples.first?.expected == live.totPages + layout.structureFrames)
        default:
            break
        }
    }

    @Test func dumpOrderDoesNotMatter() throws {
        let h = try Self.guest(width: .bits64, formats: .both)
        try h.inject(.duplicateMfn(pfn: 5001, sameAs: 5000), into: 7)
        try h.inject(.sharedLeaf(leaf: 6, sameAs: 2), into: 7)
        let xl = try Self.roundTrip(h, 7)
        for order in [DumpWriter.Order.reversed, .shuffled(seed: 42)] {
            var w = DumpWriter()
            w.order = order
            let other = try Self.roundTrip(h, 7, writer: w)
            #expect(Verdict(other.offline) == Verdict(xl.offline), "\(order)")
            #expect(other.offline.findings == xl.offline.findings, "\(order)")
        }
    }

    @Test func duplicateGmfnsAreEvidenceNotAnError() throws {
        // xl writes one pair per pfn: two pfns naming one frame give one gmfn twice.
        let h = try Self.guest(width: .bits64, formats: .both)
        try h.inject(.duplicateMfn(pfn: 5001, sameAs: 5000), into: 7)
        let (_, offline, layout) = try Self.roundTrip(h, 7)
        let twice = Dictionary(grouping: layout.pairs.filter { $0.pfn != .max }, by: \.gmfn).filter { $0.value.count > 1 }
        #expect(twice.count == 1)
        #expect(offline.finding(.duplicateMfn)?.count == 1)
        #expect(offline.finding(.m2pMismatch)?.samples.first?.pfn == 5001)
    }

    @Test func hvmDumpIsNotApplicable() throws {
        let h = SimulatedHost(memoryGiB: 1)
        var spec = GuestSpec.linux(domid: 3, name: "hvm", memoryMiB: 16)
        spec.type = .hvm
        try h.createGuest(spec)
        let scratch = Scratch()
        let layout = try DumpWriter().write(h, domid: 3, to: scratch.path("hvm.core"))
        let r = try scanCore(layout.path, domid: 3, probe: false)
        let live = scanLive(h, 3, probe: false)
        #expect(r.domainType == .hvm)
        #expect(r.severity == .notApplicable)
        #expect(r.migration.verdict == .notApplicable)
        #expect(r.migration.reason.contains("HVM"))
        #expect(r.findings.isEmpty)
        #expect(Verdict(r) == Verdict(live))
        let check = try checkCoreFile(path: layout.path)
        #expect(check.core.type == .hvm)
        #expect(check.core.guestWidthBits == nil)
    }

    @Test func widthComesFromTheXenVersionNote() throws {
        for width in [GuestWidth.bits64, .bits32] {
            let h = try Self.guest(width: width, formats: .both)
            let scratch = Scratch()
            let layout = try DumpWriter().write(h, domid: 7, to: scratch.path("w.core"))
            let c = try checkCoreFile(path: layout.path, core: CoreDumpOptions(domid: 7))
            #expect(c.core.guestWidthBits == width.bits)
            #expect(c.core.widthSource == .xenVersionNote)
            #expect(c.core.xenVersion == "4.17")
            #expect(c.core.formatVersion == "0.1")
            #expect(c.core.vcpus == 2)
            #expect(c.core.nrPages == layout.nrPages)
            #expect(c.core.dumpedPages == layout.dumped)
            #expect(c.report.guestWidthBits == width.bits)
            #expect(c.core.description.contains("\(width.bits)-bit"))
        }
    }

    @Test func widthFromA32BitContextSizeAndFromTheCaller() throws {
        let h = try Self.guest(width: .bits32, formats: .both)
        let scratch = Scratch()
        var w = DumpWriter()
        w.contextSize = DumpCoreFormat.vcpuContextSize32
        let layout = try w.write(h, domid: 7, to: scratch.path("ctx32.core"))
        // Hide the note's clue: only the context size is left.
        try layout.patch(layout.versionNoteDesc + DumpCoreFormat.xenVersionPagesizeOffset32, UInt64(0))
        let c = try checkCoreFile(path: layout.path, core: CoreDumpOptions(domid: 7))
        #expect(c.core.widthSource == .prstatusSize)
        #expect(c.core.guestWidthBits == 32)
        #expect(c.report.findings.isEmpty)

        // A 5168-byte context with no readable note: the caller must say.
        let l2 = try DumpWriter().write(h, domid: 7, to: scratch.path("ctx64.core"))
        try l2.patch(l2.versionNoteDesc + DumpCoreFormat.xenVersionPagesizeOffset32, UInt64(0))
        let e = openError(l2.path)
        #expect(e.map { "\($0)" }?.contains("width") == true)
        let forced = try checkCoreFile(path: l2.path, core: CoreDumpOptions(domid: 7, guestWidth: .bits32))
        #expect(forced.core.widthSource == .caller)
        #expect(forced.report.findings.isEmpty)
    }

    @Test func reportIsTheLiveSchema() throws {
        let h = try Self.guest(width: .bits64, formats: .both)
        let scratch = Scratch()
        let layout = try DumpWriter().write(h, domid: 7, to: scratch.path("j.core"))
        let r = try checkCore(path: layout.path, core: CoreDumpOptions(domid: 9, name: "web-1"))
        #expect(r.domid == 9)
        #expect(r.name == "web-1")
        let json = try P2MReport.encoder().encode(r)
        let back = try P2MReport.decoder().decode(P2MReport.self, from: json)
        #expect(back.backend == "core")
        #expect(back.findings == r.findings)
        let defaultName = try checkCore(path: layout.path)
        #expect(defaultName.name == "j.core")
        #expect(defaultName.domid == 0)
    }
}

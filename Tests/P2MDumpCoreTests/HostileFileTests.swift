import Foundation
import Testing
import P2MDumpCore
@testable import P2MEngine
@testable import P2MSimulator
import P2MTestSupport

/// One test per class of broken or hostile file: each must be a CoreDumpError whose
/// message names the problem and the section, never a crash or a huge allocation.
@Suite("Hostile dump-core files")
struct HostileFileTests {
    let scratch = Scratch()

    /// A small healthy PV dump to corrupt.
    func dump(_ name: String = "good.core", width: GuestWidth = .bits64) throws -> DumpWriter.Layout {
        let h = SimulatedHost(memoryGiB: 1)
        var spec = GuestSpec.linux(domid: 5, name: "g", memoryMiB: 8, maxMiB: 64, width: width)
        spec.populated = [0..<2000]
        try h.createGuest(spec)
        let layout = try DumpWriter().write(h, domid: 5, to: scratch.path(name))
        #expect(openError(layout.path) == nil)
        return layout
    }

    func expectError(_ path: String, mentions words: [String], sourceLocation: SourceLocation = #_sourceLocation) -> CoreDumpError? {
        let e = openError(path)
        #expect(e != nil, "opened without error", sourceLocation: sourceLocation)
        let text = e.map { "\($0)" } ?? ""
        for w in words { #expect(text.contains(w), "\"\(text)\" does not mention \(w)", sourceLocation: sourceLocation) }
        return e
    }

    let p2m = DumpCoreFormat.sectionP2M
    let pages = DumpCoreFormat.sectionPages
    // Section header fields.
    let shName: UInt64 = 0, shType: UInt64 = 4, shOffset: UInt64 = 24, shSize: UInt64 = 32

    @Test func notELF() throws {
        let path = scratch.path("text")
        try Data(String(repeating: "this is not a core file\n", count: 10).utf8).write(to: URL(fileURLWithPath: path))
        guard case .notDumpCore = expectError(path, mentions: ["ELF magic"]) else { Issue.record("wrong case"); return }
        let empty = scratch.path("empty")
        FileManager.default.createFile(atPath: empty, contents: Data())
        guard case .truncated = expectError(empty, mentions: ["ELF header"]) else { Issue.record("wrong case"); return }
        guard case .io = expectError(scratch.path("absent"), mentions: ["open"]) else { Issue.record("wrong case"); return }
        guard case .notRegularFile = expectError(scratch.dir, mentions: ["not a regular file"]) else { Issue.record("wrong case"); return }
    }

    @Test func wrongClassTypeOrByteOrder() throws {
        let l = try dump()
        try l.patch(4, UInt8(1))
        guard case .notDumpCore = expectError(l.path, mentions: ["ELFCLASS32", "ELFCLASS64"]) else { Issue.record("wrong case"); return }
        try l.patch(4, UInt8(2))
        try l.patch(16, UInt16(2))
        guard case .notDumpCore = expectError(l.path, mentions: ["ET_EXEC", "ET_CORE"]) else { Issue.record("wrong case"); return }
        try l.patch(16, UInt16(4))
        try l.patch(5, UInt8(2))
        guard case .unsupported = expectError(l.path, mentions: ["little-endian"]) else { Issue.record("wrong case"); return }
        try l.patch(5, UInt8(1))
        try l.patch(18, UInt16(183))
        guard case .unsupported = expectError(l.path, mentions: ["machine 183"]) else { Issue.record("wrong case"); return }
    }

    @Test func truncated() throws {
        let l = try dump()
        try l.truncate(to: 40)
        guard case .truncated = expectError(l.path, mentions: ["ELF header", "40"]) else { Issue.record("wrong case"); return }
        // Cut inside .xen_pages: the string table at the end is gone first.
        let l2 = try dump("cut.core")
        try l2.truncate(to: l2.offset[pages]! + 5000)
        guard case .sectionOutOfFile = expectError(l2.path, mentions: [".shstrtab", "truncated"]) else { Issue.record("wrong case"); return }
        // Cut inside the section header table.
        let l3 = try dump("cut3.core")
        try l3.truncate(to: 200)
        guard case .sectionOutOfFile = expectError(l3.path, mentions: ["header table"]) else { Issue.record("wrong case"); return }
    }

    @Test func sectionOffsetPastTheEnd() throws {
        let l = try dump()
        try l.patchSection(p2m, field: shOffset, l.fileSize + 4096)
        guard case .sectionOutOfFile(let s, _, _, _) = expectError(l.path, mentions: [p2m, "past the end"]) else { Issue.record("wrong case"); return }
        #expect(s == p2m)
        // An offset that wraps around 2^64 must not pass the bounds check.
        try l.patchSection(p2m, field: shOffset, UInt64.max - 8)
        _ = expectError(l.path, mentions: [p2m, "past the end"])
        try l.patchSection(p2m, field: shOffset, l.offset[p2m]!)
        try l.patchSection(pages, field: shSize, UInt64.max & ~4095)
        _ = expectError(l.path, mentions: [pages, "past the end"])
    }

    @Test func overlappingSections() throws {
        let l = try dump()
        // The table laid over the pages: page bytes would pose as (pfn, gmfn) pairs.
        try l.patchSection(p2m, field: shOffset, l.offset[pages]!)
        guard case .sectionsOverlap(let a, let b) = expectError(l.path, mentions: [p2m, pages, "overlap"]) else { Issue.record("wrong case"); return }
        #expect(Set([a, b]) == [p2m, pages])
        let l2 = try dump("ov2.core")
        try l2.patchSection(DumpCoreFormat.sectionSharedInfo, field: shOffset, UInt64(64))
        _ = expectError(l2.path, mentions: ["section header table", DumpCoreFormat.sectionSharedInfo, "overlap"])
    }

    @Test func wrongSizes() throws {
        let l = try dump()
        try l.patchSection(pages, field: shSize, l.size[pages]! - 100)
        guard case .badSectionSize(let s, _, _) = expectError(l.path, mentions: [pages, "4096"]) else { Issue.record("wrong case"); return }
        #expect(s == pages)

        let l2 = try dump("p2m.core")
        try l2.patchSection(p2m, field: shSize, l2.size[p2m]! - 8)
        _ = expectError(l2.path, mentions: [p2m, "16-byte"])

        let l3 = try dump("count.core")
        try l3.patchSection(p2m, field: shSize, l3.size[p2m]! - 16)
        guard case .countMismatch = expectError(l3.path, mentions: [p2m, pages]) else { Issue.record("wrong case"); return }

        let l4 = try dump("si.core")
        try l4.patchSection(DumpCoreFormat.sectionSharedInfo, field: shSize, UInt64(100))
        _ = expectError(l4.path, mentions: [DumpCoreFormat.sectionSharedInfo, "4096"])

        let l5 = try dump("pr.core")
        try l5.patchSection(DumpCoreFormat.sectionPrstatus, field: shSize, UInt64(2 * 4000))
        _ = expectError(l5.path, mentions: [DumpCoreFormat.sectionPrstatus, "5168"])
    }

    @Test func missingMandatorySections() throws {
        // Renaming a section (its name string) hides it: point sh_name at ".xen_pages" + 4 = "_pages".
        for victim in [p2m, DumpCoreFormat.sectionNotes, DumpCoreFormat.sectionSharedInfo, DumpCoreFormat.sectionPrstatus, pages] {
            let l = try dump("miss\(victim).core")
            try l.patchSection(victim, field: shName, UInt32(0))
            guard case .missingSection = expectError(l.path, mentions: [victim, "missing"]) else { Issue.record("wrong case for \(victim)"); continue }
        }
        let l = try dump("dup.core")
        try l.patchSection(DumpCoreFormat.sectionSharedInfo, field: shName, UInt32(try nameOffset(l, of: DumpCoreFormat.sectionPrstatus)))
        guard case .duplicateSection = expectError(l.path, mentions: [DumpCoreFormat.sectionPrstatus]) else { Issue.record("wrong case"); return }
    }

    func nameOffset(_ l: DumpWriter.Layout, of name: String) throws -> UInt32 {
        let data = try Data(contentsOf: URL(fileURLWithPath: l.path))
        let at = Int(l.header[name]!)
        return data[at..<at + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
    }

    @Test func bogusCounts() throws {
        let l = try dump()
        try l.patch(l.headerNoteDesc + 16, UInt64(1) << 60) // nr_pages
        guard case .countMismatch = expectError(l.path, mentions: ["header note", pages]) else { Issue.record("wrong case"); return }
        let l2 = try dump("vcpus.core")
        try l2.patch(l2.headerNoteDesc + 8, UInt64(1) << 63) // nr_vcpus
        _ = expectError(l2.path, mentions: [DumpCoreFormat.sectionPrstatus])
        try l2.patch(l2.headerNoteDesc + 8, UInt64(0))
        _ = expectError(l2.path, mentions: ["0 vcpus"])
        let l3 = try dump("shnum.core")
        try l3.patch(60, UInt16.max) // e_shnum: the table reads into the dump's data
        _ = expectError(l3.path, mentions: ["section"])
        try l3.patch(60, UInt16(l3.shnum))
        try l3.patch(40, l3.fileSize - 100) // e_shoff
        _ = expectError(l3.path, mentions: ["header table", "past the end"])
        let l4 = try dump("magic.core")
        try l4.patch(l4.headerNoteDesc, UInt64(0xdead_beef))
        guard case .badNotes = expectError(l4.path, mentions: ["magic", "0xdeadbeef"]) else { Issue.record("wrong case"); return }
        let l5 = try dump("note.core")
        try l5.patch(l5.versionNoteDesc - 12, UInt32.max) // xen_version descsz
        _ = expectError(l5.path, mentions: [".note.Xen", "past the end of the section"])
        let l6 = try dump("major.core")
        try l6.patch(l6.formatNoteDesc, UInt64(1) << 32 | 1)
        guard case .unsupported = expectError(l6.path, mentions: ["format version 1.1"]) else { Issue.record("wrong case"); return }
    }

    @Test func duplicatePfnsAndHalfInvalidEntries() throws {
        let l = try dump()
        let table = l.offset[p2m]!
        // Entry 10 claims entry 3's pfn (its gmfn stays its own).
        try l.patch(table + 10 * 16, l.pairs[3].pfn)
        guard case .duplicatePfn(let pfn, let a, let b) = expectError(l.path, mentions: [p2m, "twice"]) else { Issue.record("wrong case"); return }
        #expect(pfn == l.pairs[3].pfn && a == 3 && b == 10)

        let l2 = try dump("half.core")
        try l2.patch(l2.offset[p2m]! + 7 * 16 + 8, UInt64.max)
        guard case .badEntry(let s, 7, _) = expectError(l2.path, mentions: [p2m, "INVALID"]) else { Issue.record("wrong case"); return }
        #expect(s == p2m)
    }

    @Test func absurdGmfnIsRefusedWithoutAllocating() throws {
        let l = try dump()
        try l.patch(l.offset[p2m]! + 5 * 16 + 8, UInt64(1) << 50)
        let clock = ContinuousClock()
        let start = clock.now
        guard case .frameSpanTooLarge(let g, let limit, _) = expectError(l.path, mentions: [p2m, "0x4000000000000", "maxHostFrames"]) else { Issue.record("wrong case"); return }
        #expect(g == 1 << 50)
        #expect(limit == CoreDumpOptions.minimumSpan)
        #expect(clock.now - start < .seconds(5))
        // The caller may raise the bound, but never past the hard limit.
        #expect(openError(l.path, CoreDumpOptions(maxHostFrames: .max)) == .frameSpanTooLarge(maxGmfn: 1 << 50, limit: CoreDumpOptions.hardSpanLimit, pages: l.nrPages))
        // A bound the frames fit in opens the dump.
        try l.patch(l.offset[p2m]! + 5 * 16 + 8, CoreDumpOptions.minimumSpan + 5)
        #expect(openError(l.path) != nil)
        #expect(openError(l.path, CoreDumpOptions(maxHostFrames: CoreDumpOptions.minimumSpan + 6)) == nil)
    }

    @Test func garbageNeverCrashes() throws {
        // Random bytes over the header, section table and notes of a good dump.
        let good = try dump()
        let original = try Data(contentsOf: URL(fileURLWithPath: good.path))
        var rng = SplitMix(seed: 7)
        let headEnd = Int(good.offset[DumpCoreFormat.sectionSharedInfo]!)
        for round in 0..<300 {
            var d = original
            for _ in 0..<(1 + Int(rng.next() % 8)) {
                let at = Int(rng.next() % UInt64(headEnd))
                d[at] = UInt8(truncatingIfNeeded: rng.next())
            }
            let path = scratch.path("fuzz\(round % 4).core")
            try d.write(to: URL(fileURLWithPath: path))
            if let host = try? CoreDumpHost(path: path, options: CoreDumpOptions(domid: 5)) {
                // Whatever opened must scan to a report, not a trap.
                _ = P2MScanner(host: host).scan(5)
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import P2MDumpCore
@testable import P2MEngine
@testable import P2MSimulator
import P2MTestSupport

/// Writes a dump-core file of one simulated domain laid out the way `xl dump-core`
/// (tools/libs/guest/xg_core.c) lays it out: ELF header, section headers (null,
/// .shstrtab, .note.Xen, .xen_prstatus, .xen_shared_info, .xen_pages, .xen_p2m/.xen_pfn),
/// the four notes, vcpu contexts, the shared-info page, padding to a page boundary, the
/// pages, the (pfn, gmfn) table, the string table. Like xl it walks pfns below nr_gpfns in
/// ascending order, skips INVALID entries and entries above the host's max MFN (which also
/// drops identity and foreign entries), skips frames that refuse to map, writes at most
/// tot_pages pages and pads a shortfall with zero pages and INVALID pairs.
///
/// Frames outside the P2M: the simulator builds a guest's P2M pages from its own RAM, as
/// Linux does, but a few frames are still owned without a pfn (pages added by injected
/// faults, such as a tree-only copy of a leaf or a large-page block, and P2M pages
/// allocated after boot once the kernel's free pool is empty). xl would not find those in
/// the P2M; the writer gives each such owned frame (the shared-info frame aside, which
/// Xen owns and xl writes to .xen_shared_info) a pseudo pfn above both max_pfn and
/// nr_gpfns so the offline engine can still map it, and counts it into the header's page
/// count. The offline tot_pages is therefore the live one plus `structureFrames` (zero
/// for a healthy guest), and tests account for that in populated_mismatch.
///
/// The pfn -> gmfn list comes from the simulator's own record of the guest's entries, not
/// from re-walking the structure: for faults where xl's walk itself would fail (no P2M
/// published, bad p2m_vaddr), the writer still produces the file xl would have written had
/// it found the P2M, so the offline engine gets the same guest to judge.
///
/// Zero pages (all data frames of the simulator, and the padding) are left as holes of a
/// sparse file, so a 1 GiB guest costs a few MiB of disk.
struct DumpWriter {
    enum Order { case xl, reversed, shuffled(seed: UInt64) }

    var vcpus: UInt64 = 2
    /// Bytes per .xen_prstatus entry: xl writes the 5168-byte vcpu_guest_context_any_t union
    /// for both widths; 2800 models a writer that stores the 32-bit context alone.
    var contextSize: UInt64 = DumpCoreFormat.vcpuContextSize64
    var order: Order = .xl
    /// Pages dumped for an HVM guest (the simulator gives HVM guests no frames).
    var hvmPages: UInt64 = 16
    var xenMajor: UInt64 = 4
    var xenMinor: UInt64 = 17

    struct Layout {
        var path: String
        var fileSize: UInt64
        var shoff: UInt64
        var shnum: UInt64
        /// File offset of each named section's header.
        var header: [String: UInt64]
        var offset: [String: UInt64]
        var size: [String: UInt64]
        var headerNoteDesc: UInt64
        var versionNoteDesc: UInt64
        var formatNoteDesc: UInt64
        var nrPages: UInt64
        var structureFrames: UInt64
        var dumped: UInt64
        var padding: UInt64
        /// The pairs as written, in file order (padding included).
        var pairs: [(pfn: UInt64, gmfn: UInt64)]

        func patch<T: FixedWidthInteger>(_ off: UInt64, _ v: T) throws {
            let fd = open(path, O_WRONLY)
            guard fd >= 0 else { throw POSIXError(.EIO) }
            defer { close(fd) }
            var le = v.littleEndian
            guard pwrite(fd, &le, MemoryLayout<T>.size, off_t(off)) == MemoryLayout<T>.size else { throw POSIXError(.EIO) }
        }

        /// Section header fields: name 0, type 4, offset 24, size 32, entsize 56.
        func patchSection<T: FixedWidthInteger>(_ name: String, field: UInt64, _ v: T) throws {
            try patch(header[name]! + field, v)
        }

        func truncate(to size: UInt64) throws {
            guard Glibc.truncate(path, off_t(size)) == 0 else { throw POSIXError(.EIO) }
        }
    }

    func write(_ h: SimulatedHost, domid: DomID, to path: String) throws -> Layout {
        let info = try h.domainInfo(domid)
        let width = try h.guestWidth(domid)
        let maxMFN = try h.maxMFN()
        let nrGpfns = info.type == .pv ? try h.nrGpfns(domid) : 0
        let shinfo = try h.sharedInfoPage(domid, frame: info.sharedInfoFrame)

        h.lock.lock()
        var candidates: [(UInt64, UInt64)] = []
        var structure: UInt64 = 0
        var nrPages: UInt64
        var contents: [UInt64: [UInt8]] = [:]
        let owned = UInt16(truncatingIfNeeded: domid)
        func mappable(_ g: UInt64) -> Bool {
            g < h.frameCount && h.owner[Int(g)] == owned && !h.unmappable.contains(g)
        }
        let d = h.domains[domid]!
        if d.type == .pv {
            let end = min(nrGpfns, UInt64(d.leafFrames.count * d.fpp))
            var named = Set<UInt64>()
            for pfn in 0..<end {
                let g = h.entry(d, pfn)
                if g == .max || g > maxMFN { continue }
                named.insert(g)
                candidates.append((pfn, g))
            }
            var pseudo = max(nrGpfns, UInt64(d.leafFrames.count * d.fpp))
            for f in 1..<h.nextFree where h.owner[Int(f)] == owned && f != d.sharedInfoFrame && !named.contains(f) {
                candidates.append((pseudo, f))
                pseudo += 1
                structure += 1
            }
            nrPages = info.totPages + structure
        } else {
            for pfn in 0..<hvmPages { candidates.append((pfn, pfn)) }
            nrPages = hvmPages
        }
        var pairs: [(pfn: UInt64, gmfn: UInt64)] = []
        for (pfn, g) in candidates {
            if UInt64(pairs.count) >= nrPages { break }
            if d.type == .pv && !mappable(g) { continue }
            pairs.append((pfn, g))
            if d.type == .pv, let p = h.contents[g] {
                contents[g] = Array(UnsafeRawBufferPointer(start: p, count: pageSize))
            }
        }
        h.lock.unlock()

        let dumped = UInt64(pairs.count)
        let invalid = DumpCoreFormat.invalidFrame
        while UInt64(pairs.count) < nrPages { pairs.append((invalid, invalid)) }
        switch order {
        case .xl: break
        case .reversed: pairs.reverse()
        case .shuffled(let seed):
            var g = SplitMix(seed: seed)
            pairs.shuffle(using: &g)
        }

        let pv = info.type == .pv
        let tableName = pv ? DumpCoreFormat.sectionP2M : DumpCoreFormat.sectionPfn
        let entryBytes: UInt64 = pv ? 16 : 8
        // xl: the shared info is dumped whenever it could be mapped (PV always).
        let names = [DumpCoreFormat.sectionStrtab, DumpCoreFormat.sectionNotes, DumpCoreFormat.sectionPrstatus,
                     DumpCoreFormat.sectionSharedInfo, DumpCoreFormat.sectionPages, tableName]
        var strtab: [UInt8] = [0]
        var nameOff: [String: UInt32] = [:]
        for n in names {
            nameOff[n] = UInt32(strtab.count)
            strtab += Array(n.utf8) + [0]
        }
        let shnum = UInt64(names.count + 1)
        let shoff: UInt64 = 64
        let noteOff = shoff + shnum * 64
        let noteSize: UInt64 = 16 + (16 + 32) + (16 + DumpCoreFormat.xenVersionDescSize) + (16 + 8)
        let prOff = noteOff + noteSize
        let prSize = vcpus * contextSize
        let siOff = prOff + prSize
        let pagesOff = (siOff + UInt64(pageSize) + UInt64(pageSize) - 1) / UInt64(pageSize) * UInt64(pageSize)
        let pagesSize = nrPages * UInt64(pageSize)
        let tableOff = pagesOff + pagesSize
        let tableSize = nrPages * entryBytes
        let strOff = tableOff + tableSize
        let fileSize = strOff + UInt64(strtab.count)

        var head = [UInt8](repeating: 0, count: Int(pagesOff))
        func put<T: FixedWidthInteger>(_ off: UInt64, _ v: T) {
            withUnsafeBytes(of: v.littleEndian) { b in for (i, x) in b.enumerated() { head[Int(off) + i] = x } }
        }
        head[0] = 0x7f; head[1] = 0x45; head[2] = 0x4c; head[3] = 0x46
        head[4] = 2; head[5] = 1; head[6] = 1; head[7] = 0; head[8] = 1
        put(16, UInt16(4)); put(18, UInt16(62)); put(20, UInt32(1)); put(24, UInt64(0)); put(32, UInt64(0))
        put(40, shoff); put(48, UInt32(0)); put(52, UInt16(64)); put(54, UInt16(56)); put(56, UInt16(0))
        put(58, UInt16(64)); put(60, UInt16(shnum)); put(62, UInt16(1))

        var header: [String: UInt64] = [:]
        var offset: [String: UInt64] = [:]
        var size: [String: UInt64] = [:]
        let specs: [(String, UInt32, UInt64, UInt64, UInt64, UInt64)] = [
            (DumpCoreFormat.sectionStrtab, 3, strOff, UInt64(strtab.count), 0, 0),
            (DumpCoreFormat.sectionNotes, 7, noteOff, noteSize, 0, 0),
            (DumpCoreFormat.sectionPrstatus, 1, prOff, prSize, 8, contextSize),
            (DumpCoreFormat.sectionSharedInfo, 1, siOff, UInt64(pageSize), 8, UInt64(pageSize)),
            (DumpCoreFormat.sectionPages, 1, pagesOff, pagesSize, UInt64(pageSize), UInt64(pageSize)),
            (tableName, 1, tableOff, tableSize, 8, entryBytes),
        ]
        for (i, s) in specs.enumerated() {
            let at = shoff + UInt64(i + 1) * 64
            header[s.0] = at
            offset[s.0] = s.2
            size[s.0] = s.3
            put(at, nameOff[s.0]!); put(at + 4, s.1); put(at + 24, s.2); put(at + 32, s.3); put(at + 48, s.4); put(at + 56, s.5)
        }

        func note(_ at: UInt64, type: UInt32, descsz: UInt32) -> UInt64 {
            put(at, UInt32(4)); put(at + 4, descsz); put(at + 8, type)
            head[Int(at) + 12] = 0x58; head[Int(at) + 13] = 0x65; head[Int(at) + 14] = 0x6e
            return at + 16
        }
        var p = note(noteOff, type: DumpCoreFormat.noteNone, descsz: 0)
        let headerDesc = note(p, type: DumpCoreFormat.noteHeader, descsz: 32)
        put(headerDesc, pv ? DumpCoreFormat.magicPV : DumpCoreFormat.magicHVM)
        put(headerDesc + 8, vcpus); put(headerDesc + 16, nrPages); put(headerDesc + 24, UInt64(pageSize))
        p = headerDesc + 32
        let versionDesc = note(p, type: DumpCoreFormat.noteXenVersion, descsz: UInt32(DumpCoreFormat.xenVersionDescSize))
        put(versionDesc, xenMajor); put(versionDesc + 8, xenMinor)
        for (i, b) in Array(".7".utf8).enumerated() { head[Int(versionDesc) + 16 + i] = b }
        for (i, b) in Array("xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64".utf8).enumerated() {
            head[Int(versionDesc) + 16 + 16 + 144 + i] = b
        }
        put(versionDesc + DumpCoreFormat.xenVersionVirtStartOffset, UInt64(0xFFFF_8000_0000_0000))
        put(versionDesc + DumpCoreFormat.xenVersionPagesizeOffset64, UInt64(pageSize))
        if pv && width == .bits32 {
            // xl's memmove(p - 4, p, 8) for guests narrower than the toolstack.
            put(versionDesc + DumpCoreFormat.xenVersionPagesizeOffset32, UInt64(pageSize))
        }
        p = versionDesc + DumpCoreFormat.xenVersionDescSize
        let formatDesc = note(p, type: DumpCoreFormat.noteFormatVersion, descsz: 8)
        put(formatDesc, DumpCoreFormat.formatVersion)

        for (i, b) in shinfo.enumerated() { head[Int(siOff) + i] = b }

        let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0o600)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        defer { close(fd) }
        func pw(_ bytes: [UInt8], _ at: UInt64) throws {
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(at)) }
            guard n == bytes.count else { throw POSIXError(.EIO) }
        }
        try pw(head, 0)
        var table = [UInt8](repeating: 0, count: Int(tableSize))
        for (i, e) in pairs.enumerated() {
            if let c = contents[e.gmfn], e.pfn != invalid, c.contains(where: { $0 != 0 }) {
                try pw(c, pagesOff + UInt64(i) * UInt64(pageSize))
            }
            let at = i * Int(entryBytes)
            withUnsafeBytes(of: e.pfn.littleEndian) { b in for (k, x) in b.enumerated() { table[at + k] = x } }
            if pv { withUnsafeBytes(of: e.gmfn.littleEndian) { b in for (k, x) in b.enumerated() { table[at + 8 + k] = x } } }
        }
        try pw(table, tableOff)
        try pw(strtab, strOff)
        guard ftruncate(fd, off_t(fileSize)) == 0 else { throw POSIXError(.EIO) }

        return Layout(path: path, fileSize: fileSize, shoff: shoff, shnum: shnum, header: header, offset: offset, size: size,
                      headerNoteDesc: headerDesc, versionNoteDesc: versionDesc, formatNoteDesc: formatDesc, nrPages: nrPages,
                      structureFrames: structure, dumped: dumped, padding: nrPages - dumped, pairs: pairs)
    }
}

/// A scratch directory per test, removed when the value goes away.
final class Scratch {
    let dir: String
    init() {
        dir = NSTemporaryDirectory() + "p2mcore-\(getpid())-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: dir) }
    func path(_ name: String) -> String { dir + "/" + name }
}

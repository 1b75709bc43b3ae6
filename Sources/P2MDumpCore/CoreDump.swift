import P2MEngine

/// Constants of Xen's dump-core format (docs/misc/dump-core-format.txt,
/// tools/libs/guest/xg_core.h). Public so test writers and tools share one definition.
public enum DumpCoreFormat {
    public static let magicPV: UInt64 = 0xF00F_EBED
    public static let magicHVM: UInt64 = 0xF00F_EBEE
    public static let noteName = "Xen"
    public static let noteNone: UInt32 = 0x0200_0000
    public static let noteHeader: UInt32 = 0x0200_0001
    public static let noteXenVersion: UInt32 = 0x0200_0002
    public static let noteFormatVersion: UInt32 = 0x0200_0003
    /// The only major format version ever defined (minor versions add sections and notes).
    public static let formatMajor: UInt64 = 0
    public static let formatVersion: UInt64 = 1 // (0 << 32) | 1
    /// XC_CORE_INVALID_PFN / XC_CORE_INVALID_GMFN: padding entries when a live dump found
    /// fewer pages than tot_pages at its start.
    public static let invalidFrame: UInt64 = .max

    public static let sectionNotes = ".note.Xen"
    public static let sectionPrstatus = ".xen_prstatus"
    public static let sectionSharedInfo = ".xen_shared_info"
    public static let sectionP2M = ".xen_p2m"
    public static let sectionPfn = ".xen_pfn"
    public static let sectionPages = ".xen_pages"
    public static let sectionStrtab = ".shstrtab"

    /// sizeof(vcpu_guest_context) per guest width. xl writes the toolstack's
    /// vcpu_guest_context_any_t union, which is 5168 bytes for either width.
    public static let vcpuContextSize64: UInt64 = 5168
    public static let vcpuContextSize32: UInt64 = 2800

    /// struct xen_dumpcore_elfnote_xen_version_desc: 2 x u64, extraversion[16],
    /// compile_info[144], capabilities[1024], changeset[64], platform_parameters (u64), pagesize.
    public static let xenVersionDescSize: UInt64 = 1280
    public static let xenVersionVirtStartOffset: UInt64 = 1264
    /// Where `pagesize` sits: xl moves it 4 bytes down for guests narrower than the
    /// toolstack ("32 bit elf file format differs in pagesize's alignment"), which makes
    /// the note the one place in the file that records the guest's width.
    public static let xenVersionPagesizeOffset64: UInt64 = 1272
    public static let xenVersionPagesizeOffset32: UInt64 = 1268

    static let elfHeaderSize: UInt64 = 64
    static let sectionHeaderSize: UInt64 = 64
    static let shtNull: UInt32 = 0
    static let shtProgbits: UInt32 = 1
    static let shtStrtab: UInt32 = 3
    static let shtNote: UInt32 = 7
    static let shtNobits: UInt32 = 8
    static let etCore: UInt16 = 4
    static let emX86_64: UInt16 = 62
    static let em386: UInt16 = 3
}

/// A section of the dump as its header describes it (bounds already checked).
public struct CoreSection: Sendable, Equatable {
    public var name: String
    public var type: UInt32
    public var offset: UInt64
    public var size: UInt64
    public var entsize: UInt64
}

/// Where the guest width came from, for the summary (a wrong width garbles every entry).
public enum WidthSource: String, Sendable, Codable {
    case caller
    case prstatusSize = "prstatus_size"
    case xenVersionNote = "xen_version_note"
    case notApplicable = "not_applicable"
}

/// What the dump says about itself, for summaries and `--json`.
public struct CoreDumpInfo: Sendable, Equatable, Codable, CustomStringConvertible {
    public var path: String
    public var fileSize: UInt64
    public var type: DomainType
    public var guestWidthBits: Int?
    public var widthSource: WidthSource
    public var xenVersion: String?
    public var formatVersion: String
    public var vcpus: UInt64
    /// xch_nr_pages: the domain's tot_pages when the dump started.
    public var nrPages: UInt64
    /// Entries of .xen_p2m / .xen_pfn that name a real frame (the rest are padding).
    public var dumpedPages: UInt64
    public var hasSharedInfo: Bool

    public var description: String {
        var s = "core file \(path): \(type.rawValue.uppercased())"
        if let w = guestWidthBits { s += ", \(w)-bit (from \(String(widthSource.rawValue.map { $0 == "_" ? " " : $0 })))" }
        if let v = xenVersion { s += ", Xen \(v)" }
        s += ", dump-core format \(formatVersion), \(vcpus) vcpu\(vcpus == 1 ? "" : "s"), \(nrPages) pages"
        if dumpedPages != nrPages { s += " (\(dumpedPages) dumped, \(nrPages - dumpedPages) padding)" }
        return s
    }
}

/// A parsed, validated dump-core file. Construction checks the whole container
/// (ELF header, section table, notes, section sizes and counts) so that later reads of
/// any section stay inside the file; page contents and the (pfn, gmfn) table stay in the
/// mapping until the host asks for them.
public final class CoreDump: @unchecked Sendable {
    let file: MappedFile
    public let sections: [CoreSection]
    public let info: CoreDumpInfo
    public let guestWidth: GuestWidth?
    let pages: CoreSection
    /// .xen_p2m (PV) or .xen_pfn (HVM).
    let frameTable: CoreSection
    let sharedInfo: CoreSection?
    let pageCount: UInt64

    public var path: String { file.path }
    public var domainType: DomainType { info.type }

    /// - Parameter guestWidth: overrides the width found in the file (for dumps written by
    ///   tools that do not record it the way xl does).
    public init(path: String, guestWidth forcedWidth: GuestWidth? = nil) throws(CoreDumpError) {
        let f = try MappedFile(path: path)
        file = f
        try Self.checkELFHeader(f)
        let all = try Self.readSections(f)
        sections = all

        func unique(_ name: String) throws(CoreDumpError) -> CoreSection? {
            let matches = all.filter { $0.name == name }
            if matches.count > 1 { throw .duplicateSection(name) }
            return matches.first
        }
        func required(_ name: String, type: UInt32, typeName: String) throws(CoreDumpError) -> CoreSection {
            guard let s = try unique(name) else { throw .missingSection(name) }
            guard s.type == type else { throw .badSectionType(section: name, type: s.type, expected: typeName) }
            return s
        }

        let notes = try required(DumpCoreFormat.sectionNotes, type: DumpCoreFormat.shtNote, typeName: "SHT_NOTE")
        let prstatus = try required(DumpCoreFormat.sectionPrstatus, type: DumpCoreFormat.shtProgbits, typeName: "SHT_PROGBITS")
        let pagesSection = try required(DumpCoreFormat.sectionPages, type: DumpCoreFormat.shtProgbits, typeName: "SHT_PROGBITS")
        let shinfo = try unique(DumpCoreFormat.sectionSharedInfo)
        let p2m = try unique(DumpCoreFormat.sectionP2M)
        let pfn = try unique(DumpCoreFormat.sectionPfn)

        let n = try NoteSet(f, notes)
        let type: DomainType
        switch n.magic {
        case DumpCoreFormat.magicPV: type = .pv
        case DumpCoreFormat.magicHVM: type = .hvm
        default: throw .badNotes("header note has magic \(hex(n.magic)), expected \(hex(DumpCoreFormat.magicPV)) (PV) or \(hex(DumpCoreFormat.magicHVM)) (HVM)")
        }
        guard n.notePageSize == UInt64(pageSize) else {
            throw .unsupported("page size \(n.notePageSize) in the header note; only 4096-byte x86 pages are supported")
        }
        guard n.formatVersion >> 32 == DumpCoreFormat.formatMajor else {
            throw .unsupported("dump-core format version \(n.formatVersion >> 32).\(n.formatVersion & 0xffff_ffff); this reader knows major version 0")
        }

        // The table naming the dumped frames: .xen_p2m for PV (pfn, gmfn pairs), .xen_pfn
        // for auto-translated guests. Exactly one of them, matching the magic.
        let table: CoreSection
        let entryBytes: UInt64
        switch (type, p2m, pfn) {
        case (_, .some, .some):
            throw .duplicateSection("\(DumpCoreFormat.sectionP2M) and \(DumpCoreFormat.sectionPfn) (a dump has one or the other)")
        case (.pv, .some(let s), nil):
            table = s
            entryBytes = 16
        case (.pv, nil, _):
            throw .missingSection("\(DumpCoreFormat.sectionP2M) (mandatory in a PV dump)")
        case (_, nil, .some(let s)):
            table = s
            entryBytes = 8
        default:
            throw .missingSection("\(DumpCoreFormat.sectionPfn) (mandatory in an HVM dump)")
        }
        guard table.type == DumpCoreFormat.shtProgbits else {
            throw .badSectionType(section: table.name, type: table.type, expected: "SHT_PROGBITS")
        }
        guard table.size % entryBytes == 0 else {
            throw .badSectionSize(section: table.name, size: table.size, reason: "not a multiple of the \(entryBytes)-byte entry")
        }
        guard pagesSection.size % UInt64(pageSize) == 0 else {
            throw .badSectionSize(section: pagesSection.name, size: pagesSection.size, reason: "not a multiple of the 4096-byte page")
        }
        let tableCount = table.size / entryBytes
        let pageCount = pagesSection.size / UInt64(pageSize)
        guard tableCount == pageCount else {
            throw .countMismatch("\(table.name) has \(tableCount) entries but \(pagesSection.name) has \(pageCount) pages (one entry per page)")
        }
        guard n.nrPages == pageCount else {
            throw .countMismatch("the header note says \(n.nrPages) pages but \(pagesSection.name) has \(pageCount)")
        }

        // .xen_prstatus: one vcpu_guest_context per vcpu.
        guard n.nrVcpus > 0 else { throw .badNotes("header note says 0 vcpus (xl refuses to dump a domain without a vcpu context)") }
        guard prstatus.size % n.nrVcpus == 0 else {
            throw .badSectionSize(section: prstatus.name, size: prstatus.size, reason: "not a whole number of contexts for \(n.nrVcpus) vcpus")
        }
        let contextSize = prstatus.size / n.nrVcpus
        guard contextSize == DumpCoreFormat.vcpuContextSize64 || contextSize == DumpCoreFormat.vcpuContextSize32 else {
            throw .badSectionSize(section: prstatus.name, size: prstatus.size,
                                  reason: "\(contextSize) bytes per vcpu, expected \(DumpCoreFormat.vcpuContextSize64) (64-bit) or \(DumpCoreFormat.vcpuContextSize32) (32-bit vcpu_guest_context)")
        }

        if let s = shinfo {
            guard s.type == DumpCoreFormat.shtProgbits else {
                throw .badSectionType(section: s.name, type: s.type, expected: "SHT_PROGBITS")
            }
            guard s.size == UInt64(pageSize) else {
                throw .badSectionSize(section: s.name, size: s.size, reason: "a shared-info page is 4096 bytes")
            }
        } else if type == .pv {
            // Optional in the spec, but a PV guest publishes its P2M only there.
            throw .missingSection("\(DumpCoreFormat.sectionSharedInfo) (a PV guest's P2M is found through its shared info)")
        }

        var width: GuestWidth?
        var source = WidthSource.notApplicable
        if type == .pv {
            if let w = forcedWidth {
                (width, source) = (w, .caller)
            } else if contextSize == DumpCoreFormat.vcpuContextSize32 {
                (width, source) = (.bits32, .prstatusSize)
            } else if let w = n.widthFromXenVersion {
                (width, source) = (w, .xenVersionNote)
            } else {
                throw .unsupported("cannot tell the guest's width: .xen_prstatus holds \(contextSize)-byte contexts (either width) and the xen_version note is missing or has no recognisable pagesize; pass the width explicitly")
            }
        }

        var dumped: UInt64 = 0
        let invalid = DumpCoreFormat.invalidFrame
        for i in 0..<tableCount {
            let off = table.offset &+ i &* entryBytes
            if entryBytes == 16 {
                if f.u64(off) != invalid || f.u64(off &+ 8) != invalid { dumped &+= 1 }
            } else if f.u64(off) != invalid {
                dumped &+= 1
            }
        }

        self.pages = pagesSection
        self.frameTable = table
        self.sharedInfo = shinfo
        self.pageCount = pageCount
        self.guestWidth = width
        self.info = CoreDumpInfo(path: path, fileSize: f.size, type: type, guestWidthBits: width?.bits, widthSource: source,
                                 xenVersion: n.xenVersion, formatVersion: "\(n.formatVersion >> 32).\(n.formatVersion & 0xffff_ffff)",
                                 vcpus: n.nrVcpus, nrPages: n.nrPages, dumpedPages: dumped, hasSharedInfo: shinfo != nil)
    }

    /// The raw shared-info page, or nil when the dump has none.
    public func sharedInfoPage() -> [UInt8]? {
        guard let s = sharedInfo else { return nil }
        return [UInt8](UnsafeRawBufferPointer(start: file.base + Int(s.offset), count: pageSize))
    }

    /// Entry `i` of .xen_p2m (PV dumps only; `i < pageCount`).
    @inline(__always) func p2mEntry(_ i: UInt64) -> (pfn: UInt64, gmfn: UInt64) {
        let off = frameTable.offset &+ i &* 16
        return (file.u64(off), file.u64(off &+ 8))
    }

    /// Start of dumped page `i` (`i < pageCount`).
    @inline(__always) func pageAddress(_ i: UInt64) -> UnsafeRawPointer {
        file.base + Int(pages.offset &+ i &* UInt64(pageSize))
    }

    // MARK: - Container checks

    private static func checkELFHeader(_ f: MappedFile) throws(CoreDumpError) {
        guard f.u8(0) == 0x7f, f.u8(1) == 0x45, f.u8(2) == 0x4c, f.u8(3) == 0x46 else {
            throw .notDumpCore("no ELF magic at the start of the file")
        }
        let cls = f.u8(4)
        guard cls == 2 else {
            throw .notDumpCore("ELF class \(cls) (\(cls == 1 ? "ELFCLASS32" : "unknown")): dump-core files are always ELFCLASS64")
        }
        let data = f.u8(5)
        guard data == 1 else {
            throw .unsupported("ELF data encoding \(data): only little-endian (x86) dumps are supported")
        }
        guard f.u8(6) == 1 else { throw .notDumpCore("ELF identification version \(f.u8(6)), expected 1") }
        let type = f.u16(16)
        guard type == DumpCoreFormat.etCore else {
            throw .notDumpCore("ELF type \(type) (\(elfTypeName(type))), expected ET_CORE (4)")
        }
        let machine = f.u16(18)
        guard machine == DumpCoreFormat.emX86_64 || machine == DumpCoreFormat.em386 else {
            throw .unsupported("ELF machine \(machine): only dumps taken on x86 hosts carry a PV P2M")
        }
    }

    private static func elfTypeName(_ t: UInt16) -> String {
        switch t {
        case 0: return "ET_NONE"
        case 1: return "ET_REL"
        case 2: return "ET_EXEC"
        case 3: return "ET_DYN"
        default: return "unknown"
        }
    }

    private static func readSections(_ f: MappedFile) throws(CoreDumpError) -> [CoreSection] {
        let shoff = f.u64(40)
        let shentsize = UInt64(f.u16(58))
        let shnum = UInt64(f.u16(60))
        let shstrndx = UInt64(f.u16(62))
        guard shoff != 0, shnum > 0 else {
            throw .badSectionTable("the file has no section headers (dump-core files describe everything with sections)")
        }
        guard shentsize == DumpCoreFormat.sectionHeaderSize else {
            throw .badSectionTable("section header size \(shentsize), expected 64")
        }
        guard f.contains(shoff, shnum &* shentsize) else {
            throw .sectionOutOfFile(section: "header table", offset: shoff, size: shnum &* shentsize, fileSize: f.size)
        }
        guard shstrndx > 0, shstrndx < shnum else {
            throw .badSectionTable("string table index \(shstrndx) outside 1..<\(shnum)")
        }

        struct Raw { var nameOff: UInt64; var type: UInt32; var offset: UInt64; var size: UInt64; var entsize: UInt64 }
        var raws: [Raw] = []
        raws.reserveCapacity(Int(shnum))
        for i in 0..<shnum {
            let h = shoff &+ i &* shentsize
            raws.append(Raw(nameOff: UInt64(f.u32(h)), type: f.u32(h &+ 4), offset: f.u64(h &+ 24), size: f.u64(h &+ 32), entsize: f.u64(h &+ 56)))
        }

        let strtab = raws[Int(shstrndx)]
        guard strtab.type == DumpCoreFormat.shtStrtab else {
            throw .badSectionType(section: "\(DumpCoreFormat.sectionStrtab) (section \(shstrndx))", type: strtab.type, expected: "SHT_STRTAB")
        }
        guard f.contains(strtab.offset, strtab.size) else {
            throw .sectionOutOfFile(section: "\(DumpCoreFormat.sectionStrtab) (section \(shstrndx))", offset: strtab.offset, size: strtab.size, fileSize: f.size)
        }

        func name(_ i: UInt64, _ off: UInt64) throws(CoreDumpError) -> String {
            guard off < strtab.size else {
                throw .badSectionTable("name of section \(i) starts at \(off), outside the \(strtab.size)-byte string table")
            }
            var bytes: [UInt8] = []
            var p = off
            // Names are short; a longer one is garbage, not a reason to read the whole table.
            while p < strtab.size && bytes.count <= 256 {
                let b = f.u8(strtab.offset &+ p)
                if b == 0 { return String(decoding: bytes, as: UTF8.self) }
                bytes.append(b)
                p += 1
            }
            throw .badSectionTable("name of section \(i) is not NUL-terminated within 256 bytes of the string table")
        }

        var out: [CoreSection] = []
        for i in 1..<shnum {
            let r = raws[Int(i)]
            if r.type == DumpCoreFormat.shtNull { continue }
            let n = try name(i, r.nameOff)
            let label = n.isEmpty ? "#\(i)" : n
            if r.type != DumpCoreFormat.shtNobits && !f.contains(r.offset, r.size) {
                throw .sectionOutOfFile(section: label, offset: r.offset, size: r.size, fileSize: f.size)
            }
            out.append(CoreSection(name: label, type: r.type, offset: r.offset, size: r.size, entsize: r.entsize))
        }

        // Sections, the ELF header and the section header table must not share bytes: an
        // overlap would let one section's data pose as another's (e.g. pages as the p2m).
        var regions: [(name: String, start: UInt64, end: UInt64)] = [
            ("ELF header", 0, DumpCoreFormat.elfHeaderSize),
            ("section header table", shoff, shoff &+ shnum &* shentsize),
        ]
        for s in out where s.type != DumpCoreFormat.shtNobits && s.size > 0 {
            regions.append((s.name, s.offset, s.offset &+ s.size))
        }
        regions.sort { $0.start < $1.start || ($0.start == $1.start && $0.end < $1.end) }
        var reach = regions[0]
        for r in regions.dropFirst() {
            if r.start < reach.end { throw .sectionsOverlap(first: reach.name, second: r.name) }
            if r.end > reach.end { reach = r }
        }
        return out
    }
}

/// The notes of .note.Xen that this reader uses.
struct NoteSet {
    var magic: UInt64 = 0
    var nrVcpus: UInt64 = 0
    var nrPages: UInt64 = 0
    var notePageSize: UInt64 = 0
    var formatVersion: UInt64 = 0
    var xenVersion: String?
    var widthFromXenVersion: GuestWidth?

    init(_ f: MappedFile, _ s: CoreSection) throws(CoreDumpError) {
        var haveHeader = false
        var haveFormat = false
        var haveVersion = false
        var p: UInt64 = 0
        func align4(_ v: UInt64) -> UInt64 { (v &+ 3) & ~3 }
        while p < s.size {
            guard s.size - p >= 12 else { throw .badNotes("\(s.size - p) stray bytes at offset \(p), too short for a note header") }
            let at = s.offset &+ p
            let namesz = UInt64(f.u32(at)), descsz = UInt64(f.u32(at &+ 4)), type = f.u32(at &+ 8)
            let nameStart = p &+ 12
            let descStart = nameStart &+ align4(namesz)
            let next = descStart &+ align4(descsz)
            guard next <= s.size else {
                throw .badNotes("note at offset \(p) (type \(hex(UInt64(type))), name \(namesz) bytes, descriptor \(descsz) bytes) runs past the end of the section")
            }
            let isXen = namesz == 4 && f.u32(s.offset &+ nameStart) == UInt32(littleEndian: 0x006e_6558) // "Xen\0"
            let desc = s.offset &+ descStart
            if isXen {
                switch type {
                case DumpCoreFormat.noteHeader:
                    guard !haveHeader else { throw .badNotes("two header notes") }
                    guard descsz >= 32 else { throw .badNotes("header note descriptor is \(descsz) bytes, expected 32") }
                    magic = f.u64(desc)
                    nrVcpus = f.u64(desc &+ 8)
                    nrPages = f.u64(desc &+ 16)
                    notePageSize = f.u64(desc &+ 24)
                    haveHeader = true
                case DumpCoreFormat.noteFormatVersion:
                    guard !haveFormat else { throw .badNotes("two format_version notes") }
                    guard descsz >= 8 else { throw .badNotes("format_version note descriptor is \(descsz) bytes, expected 8") }
                    formatVersion = f.u64(desc)
                    haveFormat = true
                case DumpCoreFormat.noteXenVersion:
                    guard !haveVersion else { throw .badNotes("two xen_version notes") }
                    haveVersion = true
                    if descsz >= 16 {
                        let major = f.u64(desc), minor = f.u64(desc &+ 8)
                        if major < 1 << 16 && minor < 1 << 16 { xenVersion = "\(major).\(minor)" }
                    }
                    if descsz >= DumpCoreFormat.xenVersionDescSize {
                        if f.u64(desc &+ DumpCoreFormat.xenVersionPagesizeOffset64) == UInt64(pageSize) {
                            widthFromXenVersion = .bits64
                        } else if f.u32(desc &+ DumpCoreFormat.xenVersionPagesizeOffset32) == UInt32(pageSize)
                                    && f.u32(desc &+ DumpCoreFormat.xenVersionPagesizeOffset64) == 0 {
                            widthFromXenVersion = .bits32
                        }
                    }
                default:
                    // The "none" note and notes of later minor versions carry nothing we need.
                    break
                }
            }
            p = next
        }
        guard haveHeader else { throw .badNotes("no header note (type \(hex(UInt64(DumpCoreFormat.noteHeader)))): nothing says how many pages and vcpus the dump holds") }
        guard haveFormat else { throw .badNotes("no format_version note (type \(hex(UInt64(DumpCoreFormat.noteFormatVersion)))): the spec requires readers to check it") }
    }
}

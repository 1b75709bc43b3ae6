#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Everything that can be wrong with a dump-core file. A dump is hostile input: every
/// case names the problem and, where there is one, the section, so an operator can tell
/// a truncated copy from a corrupt header from a file that is not a dump at all.
public enum CoreDumpError: Error, Equatable, Sendable, CustomStringConvertible {
    case io(path: String, operation: String, errno: Int32)
    case notRegularFile(path: String)
    /// Not an ELF file, or an ELF file that is not a Xen dump-core (class, type, byte order).
    case notDumpCore(String)
    /// A well-formed dump this reader cannot analyse (format major version, architecture, size).
    case unsupported(String)
    /// The file ends inside a fixed-size structure.
    case truncated(what: String, needed: UInt64, fileSize: UInt64)
    case sectionOutOfFile(section: String, offset: UInt64, size: UInt64, fileSize: UInt64)
    case sectionsOverlap(first: String, second: String)
    case badSectionTable(String)
    case missingSection(String)
    case duplicateSection(String)
    case badSectionType(section: String, type: UInt32, expected: String)
    case badSectionSize(section: String, size: UInt64, reason: String)
    case badNotes(String)
    /// Counts that must agree (header note, .xen_pages, .xen_p2m/.xen_pfn) do not.
    case countMismatch(String)
    case badEntry(section: String, index: UInt64, reason: String)
    case duplicatePfn(pfn: UInt64, firstEntry: UInt64, secondEntry: UInt64)
    /// The dump names machine frames so far apart that the M2P built from it would be huge.
    case frameSpanTooLarge(maxGmfn: UInt64, limit: UInt64, pages: UInt64)

    public var description: String {
        switch self {
        case .io(let path, let op, let e):
            return "\(path): \(op) failed: \(String(cString: strerror(e)))"
        case .notRegularFile(let path):
            return "\(path): not a regular file"
        case .notDumpCore(let why):
            return "not a Xen dump-core file: \(why)"
        case .unsupported(let why):
            return "unsupported dump-core file: \(why)"
        case .truncated(let what, let needed, let size):
            return "file truncated: \(what) needs \(needed) bytes, the file has \(size)"
        case .sectionOutOfFile(let s, let off, let size, let fileSize):
            return "section \(s) (offset \(hex(off)), size \(hex(size))) extends past the end of the file (\(hex(fileSize)) bytes): the file is truncated or its section header is corrupt"
        case .sectionsOverlap(let a, let b):
            return "sections \(a) and \(b) overlap in the file"
        case .badSectionTable(let why):
            return "bad section header table: \(why)"
        case .missingSection(let s):
            return "mandatory section \(s) is missing"
        case .duplicateSection(let s):
            return "section \(s) appears more than once"
        case .badSectionType(let s, let t, let expected):
            return "section \(s) has type \(t), expected \(expected)"
        case .badSectionSize(let s, let size, let why):
            return "section \(s) has size \(size): \(why)"
        case .badNotes(let why):
            return "bad .note.Xen section: \(why)"
        case .countMismatch(let why):
            return "inconsistent counts: \(why)"
        case .badEntry(let s, let i, let why):
            return "section \(s), entry \(i): \(why)"
        case .duplicatePfn(let pfn, let a, let b):
            return "section .xen_p2m names pfn \(hex(pfn)) twice (entries \(a) and \(b)): a dump lists each pfn once"
        case .frameSpanTooLarge(let maxGmfn, let limit, let pages):
            return "section .xen_p2m names gmfn \(hex(maxGmfn)), but a dump of \(pages) pages may span at most \(limit) machine frames "
                + "(the offline M2P costs 8 bytes per frame of the span); if the host really was this large, raise the limit (CoreDumpOptions.maxHostFrames)"
        }
    }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only, private memory mapping of a whole file. Dumps are as large as the guest,
/// so nothing reads them into memory: pages come in from the page cache as the engine
/// touches them. All reads are unaligned-safe (a hostile file can put a section anywhere);
/// callers check bounds against `size` before reading.
final class MappedFile: @unchecked Sendable {
    let path: String
    let base: UnsafeRawPointer
    let size: UInt64

    init(path: String) throws(CoreDumpError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io(path: path, operation: "fstat", errno: errno) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .notRegularFile(path: path) }
        let n = UInt64(st.st_size)
        // mmap refuses length 0; an ELF header is 64 bytes, so report the truncation instead.
        guard n >= 64 else { throw .truncated(what: "ELF header", needed: 64, fileSize: n) }
        guard n <= UInt64(Int.max) else { throw .unsupported("file of \(n) bytes does not fit the address space") }
        let p = mmap(nil, Int(n), PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw .io(path: path, operation: "mmap", errno: errno) }
        base = UnsafeRawPointer(p)
        size = n
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), Int(size)) }

    @inline(__always) func u8(_ off: UInt64) -> UInt8 { base.load(fromByteOffset: Int(off), as: UInt8.self) }
    @inline(__always) func u16(_ off: UInt64) -> UInt16 { UInt16(littleEndian: base.loadUnaligned(fromByteOffset: Int(off), as: UInt16.self)) }
    @inline(__always) func u32(_ off: UInt64) -> UInt32 { UInt32(littleEndian: base.loadUnaligned(fromByteOffset: Int(off), as: UInt32.self)) }
    @inline(__always) func u64(_ off: UInt64) -> UInt64 { UInt64(littleEndian: base.loadUnaligned(fromByteOffset: Int(off), as: UInt64.self)) }

    /// True when [off, off + len) lies inside the file, without overflowing.
    func contains(_ off: UInt64, _ len: UInt64) -> Bool {
        let (end, o) = off.addingReportingOverflow(len)
        return !o && end <= size
    }
}

import Foundation

/// One bit per host frame in [0, maxMFN], for duplicate detection.
///
/// Its size follows the host, not the guest: on a 2 TiB host it is 64 MiB even for a
/// 64 MiB guest. Allocating and zeroing it per scan made a fleet of small guests cost
/// page faults and zeroing proportional to (guests x host memory). So a bitmap is reused
/// across scans, and a small side table records which 4 KiB chunks a scan touched; only
/// those are cleared afterwards, which keeps the cost proportional to the guest.
public final class MFNBitmap: @unchecked Sendable {
    /// 512 words = 4 KiB of bitmap = 32768 frames per chunk.
    static let chunkShift = 9

    let words: UnsafeMutablePointer<UInt64>
    let wordCount: Int
    /// One byte per chunk, non-zero once any bit in the chunk may have been set.
    let dirty: UnsafeMutablePointer<UInt8>
    let chunkCount: Int

    /// Bytes mapped for `words` (whole pages).
    let mappedBytes: Int
    /// False when `words` came from the heap because mmap failed.
    let mapped: Bool

    init(maxMFN: UInt64) {
        // Guarded by the caller: maxMFN is the hypervisor's, not the guest's.
        wordCount = Int((maxMFN >> 6) + 1)
        chunkCount = (wordCount >> Self.chunkShift) + 1
        mappedBytes = (wordCount * 8 + pageSize - 1) & ~(pageSize - 1)
        // Anonymous memory arrives zeroed and is only made resident where a scan writes,
        // and (see `relax`) can be handed back to the kernel without unmapping it.
        let p = mmap(nil, mappedBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if let p, p != MAP_FAILED {
            words = p.bindMemory(to: UInt64.self, capacity: wordCount)
            mapped = true
        } else {
            words = .allocate(capacity: wordCount)
            words.initialize(repeating: 0, count: wordCount)
            mapped = false
        }
        dirty = .allocate(capacity: chunkCount)
        dirty.initialize(repeating: 0, count: chunkCount)
    }

    deinit {
        if mapped { munmap(words, mappedBytes) } else { words.deallocate() }
        dirty.deallocate()
    }

    /// Lets the kernel take the (all-zero) pages back when it needs memory: MADV_FREE
    /// keeps them mapped and resident until then, so the next scan does not fault them
    /// in again, and a reclaimed page reads as zero, which is what the bitmap holds.
    func relax() {
        guard mapped else { return }
        if madvise(words, mappedBytes, 8 /* MADV_FREE, Linux >= 4.5 */) != 0 {
            _ = madvise(words, mappedBytes, Int32(MADV_DONTNEED))
        }
    }

    /// Memory this bitmap holds.
    var footprint: Int { mappedBytes + chunkCount }

    func covers(maxMFN: UInt64) -> Bool { Int((maxMFN >> 6) + 1) == wordCount }

    /// Zeroes every chunk a scan touched, leaving the whole bitmap zero.
    func clearTouched() {
        let chunkWords = 1 << Self.chunkShift
        for c in 0..<chunkCount where dirty[c] != 0 {
            let start = c << Self.chunkShift
            let n = min(chunkWords, wordCount - start)
            if n > 0 { (words + start).update(repeating: 0, count: n) }
            dirty[c] = 0
        }
    }
}

/// Bitmaps kept between scans, at most one per concurrent scan. `relax()` marks the
/// idle ones reclaimable; `drain()` unmaps them.
public final class MFNBitmapPool: @unchecked Sendable {
    private let lock = NSLock()
    private var idle: [MFNBitmap] = []

    public init() {}

    func take(maxMFN: UInt64) -> MFNBitmap {
        lock.lock()
        // A host whose highest MFN changed (memory hotplug) needs a bitmap of a new size.
        idle.removeAll { !$0.covers(maxMFN: maxMFN) }
        let b = idle.popLast()
        lock.unlock()
        return b ?? MFNBitmap(maxMFN: maxMFN)
    }

    /// Takes back a bitmap that is all zero again.
    func give(_ b: MFNBitmap) {
        lock.lock()
        idle.append(b)
        lock.unlock()
    }

    /// Frees the idle bitmaps (bytes returned).
    @discardableResult
    public func drain() -> Int {
        lock.lock()
        let freed = idle.reduce(0) { $0 + $1.footprint }
        idle.removeAll()
        lock.unlock()
        return freed
    }

    /// Marks the idle bitmaps' pages reclaimable under memory pressure (see MFNBitmap.relax).
    public func relax() {
        lock.lock()
        let bitmaps = idle
        lock.unlock()
        for b in bitmaps { b.relax() }
    }

    /// Bytes held by idle bitmaps.
    public var idleBytes: Int {
        lock.lock(); defer { lock.unlock() }
        return idle.reduce(0) { $0 + $1.footprint }
    }
}

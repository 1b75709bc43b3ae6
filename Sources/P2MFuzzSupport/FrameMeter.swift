#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import P2MEngine

/// Counts what a scan asks of its host, so the harness can hold the engine to a step
/// budget (map calls, frames) and a memory budget (frames mapped at once).
public final class FrameMeter: @unchecked Sendable {
    public internal(set) var mapCalls = 0
    public internal(set) var emptyMapCalls = 0
    public internal(set) var framesMapped = 0
    /// Map calls the host answered with an error for the whole call (domain gone, EFAULT).
    public internal(set) var failedMapCalls = 0
    public internal(set) var liveFrames = 0
    public internal(set) var peakLiveFrames = 0
    public internal(set) var sharedInfoReads = 0
    public internal(set) var domainInfoCalls = 0

    public init() {}

    func mapped(_ n: Int) {
        mapCalls += 1
        if n == 0 { emptyMapCalls += 1 }
        framesMapped += n
        liveFrames += n
        peakLiveFrames = max(peakLiveFrames, liveFrames)
    }

    func released(_ n: Int) { liveFrames -= n }
}

/// ASan's manual poisoning, looked up at run time so the same code runs unsanitized.
/// A frame the host reports as failed is poisoned: if the engine reads it anyway
/// (FrameMapping's contract says it must not), ASan stops the run at the read.
enum Poison {
    typealias Fn = @convention(c) (UnsafeRawPointer?, Int) -> Void
    static let poison: Fn? = lookup("__asan_poison_memory_region")
    static let unpoison: Fn? = lookup("__asan_unpoison_memory_region")

    private static func lookup(_ name: String) -> Fn? {
        #if canImport(Glibc) || canImport(Musl)
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
        return unsafeBitCast(sym, to: Fn.self)
        #else
        return nil
        #endif
    }
}

/// Builds a FrameMapping of `count` page slots. `fill(i, page)` returns 0 and writes the
/// page, or an errno for a frame that refused to map.
func makeMapping(count n: Int, meter: FrameMeter, fill: (Int, UnsafeMutableRawPointer) -> Int32) -> FrameMapping {
    let bytes = max(1, n) * pageSize
    let base = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: pageSize)
    var errors = [Int32](repeating: 0, count: n)
    var poisoned: [Int] = []
    for i in 0..<n {
        let page = base + i * pageSize
        let e = fill(i, page)
        if e != 0 {
            errors[i] = e
            page.initializeMemory(as: UInt8.self, repeating: 0xA5, count: pageSize)
            poisoned.append(i)
        }
    }
    if let p = Poison.poison { for i in poisoned { p(base + i * pageSize, pageSize) } }
    meter.mapped(n)
    return FrameMapping(base: UnsafeRawPointer(base), count: n, errors: errors) {
        if let u = Poison.unpoison { u(base, bytes) }
        base.deallocate()
        meter.released(n)
    }
}

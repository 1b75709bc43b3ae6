import Foundation
import P2MEngine

/// A simulated Xen host: machine frames, Xen's M2P, and PV/HVM domains whose P2M is laid
/// out in "guest memory" the way Linux's arch/x86/xen/p2m.c lays it out. Only frames with
/// content (P2M pages, page tables) take memory, so a 1 TiB guest with 4 GiB populated
/// costs megabytes. Thread-safe: one lock guards the whole host, so each map call sees
/// a consistent snapshot (a real guest could be mid-update; faults model that instead).
public final class SimulatedHost: P2MHost, @unchecked Sendable {
    public let backendName = "sim"
    public static let invalidM2P: UInt64 = .max
    static let noOwner: UInt16 = 0x7FF4 // DOMID_INVALID

    let lock = NSLock()
    public let frameCount: UInt64
    var m2p: UnsafeMutableBufferPointer<UInt64>
    var owner: [UInt16]
    var contents: [UInt64: UnsafeMutableRawPointer] = [:]
    var unmappable: Set<UInt64> = []
    var freeList: [UInt64] = []
    var nextFree: UInt64 = 1 // MFN 0 is never handed out: a zero MFN is always a fault
    var domains: [DomID: SimDomain] = [:]
    /// Map calls made so far, per domain (for "vanish after N calls").
    var mapCalls: [DomID: Int] = [:]
    /// Map calls made in total (benchmarks and tests count them).
    public private(set) var totalMapCalls = 0
    /// Host-wide faults (listing, M2P) and the calls of each kind made so far.
    var hostFaults: [HostFault] = []
    var hostCalls: [HostFault.Operation: Int] = [:]
    /// Buffers of released mappings, by size: a fresh 1 MiB allocation per map call is
    /// an mmap, 256 page faults and an munmap, which made the simulator, not the scanner,
    /// the larger cost of a fleet poll. Real foreign mappings have no such cost.
    let buffers = BufferPool()
    /// Zero-copy mode: map calls lend the frames' own pages, as a foreign mapping does,
    /// instead of copying them into a fresh buffer. The mapping then sees the guest's
    /// later writes (as on real Xen), and frames freed while a mapping is out are only
    /// released when the last mapping goes (Xen holds a reference on mapped pages).
    public let lendsFrames: Bool
    var lentMappings = 0
    var freedWhileLent: [UnsafeMutableRawPointer] = []
    /// Thread CPU time spent inside map calls and shared-info reads (the simulator's own
    /// cost, which real Xen does not charge to xenp2m's user time), and frames handed out.
    var hostCPUNanos: UInt64 = 0
    public private(set) var framesLent: UInt64 = 0
    public private(set) var framesCopied: UInt64 = 0
    nonisolated(unsafe) static let zeroPage: UnsafeMutableRawPointer = {
        let p = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
        return p
    }()
    nonisolated(unsafe) static let poisonPage: UnsafeMutableRawPointer = {
        let p = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
        p.initializeMemory(as: UInt8.self, repeating: 0xA5, count: pageSize)
        return p
    }()

    /// - Parameters:
    ///   - frames: machine frames on the host (max MFN = frames - 1).
    ///   - zeroCopy: lend pages to map calls instead of copying them (see `lendsFrames`).
    public init(frames: UInt64, zeroCopy: Bool = false) {
        precondition(frames >= 16 && frames < (1 << 40), "host size out of range")
        frameCount = frames
        lendsFrames = zeroCopy
        m2p = .allocate(capacity: Int(frames))
        m2p.initialize(repeating: Self.invalidM2P)
        owner = [UInt16](repeating: Self.noOwner, count: Int(frames))
    }

    public convenience init(memoryGiB: UInt64, zeroCopy: Bool = false) {
        self.init(frames: memoryGiB << 18, zeroCopy: zeroCopy)
    }

    deinit {
        for p in contents.values { p.deallocate() }
        for p in freedWhileLent { p.deallocate() }
        m2p.deallocate()
    }

    // MARK: - Frame allocation (callers hold the lock)

    func allocFrame(for domid: DomID) throws(SimError) -> UInt64 {
        let mfn: UInt64
        if let f = freeList.popLast() {
            mfn = f
        } else {
            guard nextFree < frameCount else { throw SimError.outOfMemory }
            mfn = nextFree
            nextFree += 1
        }
        owner[Int(mfn)] = UInt16(truncatingIfNeeded: domid)
        return mfn
    }

    /// `count` contiguous frames aligned to `align` (for large-page mappings).
    func allocContiguous(_ count: UInt64, align: UInt64, for domid: DomID) throws(SimError) -> UInt64 {
        var start = (nextFree + align - 1) / align * align
        if start == 0 { start = align }
        guard start + count <= frameCount else { throw SimError.outOfMemory }
        for f in nextFree..<start { freeList.append(f) }
        for f in start..<(start + count) { owner[Int(f)] = UInt16(truncatingIfNeeded: domid) }
        nextFree = start + count
        return start
    }

    func freeFrame(_ mfn: UInt64) {
        owner[Int(mfn)] = Self.noOwner
        m2p[Int(mfn)] = Self.invalidM2P
        if let p = contents.removeValue(forKey: mfn) {
            if lentMappings > 0 { freedWhileLent.append(p) } else { p.deallocate() }
        }
        unmappable.remove(mfn)
        freeList.append(mfn)
    }

    /// A zeroed content page for a frame (structure pages, shared info).
    func page(_ mfn: UInt64) -> UnsafeMutableRawPointer {
        if let p = contents[mfn] { return p }
        let p = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
        contents[mfn] = p
        return p
    }

    func store(_ mfn: UInt64, _ index: Int, _ value: UInt64, bytes: Int) {
        let p = page(mfn)
        if bytes == 4 {
            p.storeBytes(of: value == .max ? UInt32.max : UInt32(truncatingIfNeeded: value), toByteOffset: index * 4, as: UInt32.self)
        } else {
            p.storeBytes(of: value, toByteOffset: index * 8, as: UInt64.self)
        }
    }

    func load(_ mfn: UInt64, _ index: Int, bytes: Int) -> UInt64 {
        guard let p = contents[mfn] else { return 0 }
        if bytes == 4 {
            let v = p.load(fromByteOffset: index * 4, as: UInt32.self)
            return v == .max ? .max : UInt64(v)
        }
        return p.load(fromByteOffset: index * 8, as: UInt64.self)
    }

    // MARK: - P2MHost

    public func listDomains() throws(HostError) -> [DomainInfo] {
        lock.lock(); defer { lock.unlock() }
        if let f = hostFault(.listDomains) {
            // The Xen backend's wording for a failed xc_domain_getinfolist.
            throw HostError.system(operation: "list domains from domid 0", errno: f.errno)
        }
        return domains.keys.sorted().map { domains[$0]!.info }
    }

    public func domainInfo(_ domid: DomID) throws(HostError) -> DomainInfo {
        lock.lock(); defer { lock.unlock() }
        guard let d = domains[domid] else { throw HostError.domainNotFound(domid) }
        return d.info
    }

    public func guestWidth(_ domid: DomID) throws(HostError) -> GuestWidth {
        lock.lock(); defer { lock.unlock() }
        guard let d = domains[domid] else { throw HostError.domainNotFound(domid) }
        return d.width
    }

    public func nrGpfns(_ domid: DomID) throws(HostError) -> UInt64 {
        lock.lock(); defer { lock.unlock() }
        guard let d = domains[domid] else { throw HostError.domainNotFound(domid) }
        // Xen derives a PV guest's nr_gpfns from its published max_pfn.
        return d.nrGpfnsOverride ?? max(d.shared.maxPfn, 1)
    }

    public func maxMFN() throws(HostError) -> UInt64 { frameCount - 1 }

    public func sharedInfoPage(_ domid: DomID, frame: UInt64) throws(HostError) -> [UInt8] {
        lock.lock()
        let t0 = threadCPUNanos()
        defer { hostCPUNanos &+= threadCPUNanos() &- t0; lock.unlock() }
        guard let d = domains[domid] else { throw HostError.domainNotFound(domid) }
        guard frame == d.sharedInfoFrame else { throw HostError.system(operation: "map shared info frame \(frame) of domain \(domid)", errno: EPERM) }
        if d.faults.generationAlwaysMoving { d.shared.p2mGeneration &+= 1 }
        var page = [UInt8](repeating: 0, count: pageSize)
        d.shared.write(into: &page, width: d.width)
        return page
    }

    public func mapFrames(_ domid: DomID, _ mfns: UnsafeBufferPointer<UInt64>) throws(HostError) -> FrameMapping {
        lock.lock()
        let t0 = threadCPUNanos()
        defer { hostCPUNanos &+= threadCPUNanos() &- t0; lock.unlock() }
        totalMapCalls += 1
        guard let d = domains[domid] else { throw HostError.domainNotFound(domid) }
        let calls = (mapCalls[domid] ?? 0) + 1
        mapCalls[domid] = calls
        if let n = d.faults.vanishAfterMapCalls, calls > n {
            destroyLocked(domid)
            throw HostError.domainNotFound(domid)
        }
        if d.faults.allMapsFail {
            throw HostError.system(operation: "map \(mfns.count) frames of domain \(domid)", errno: EFAULT)
        }
        let n = mfns.count
        var errors = [Int32](repeating: 0, count: n)
        let owned = UInt16(truncatingIfNeeded: domid)
        if lendsFrames && n > 0 {
            var pages = [UnsafeRawPointer](repeating: UnsafeRawPointer(Self.poisonPage), count: n)
            for i in 0..<n {
                let mfn = mfns[i]
                if mfn >= frameCount || owner[Int(mfn)] != owned || unmappable.contains(mfn) {
                    errors[i] = EPERM
                    continue
                }
                // A frame with no content (guest data the simulator does not keep) reads as zeros.
                pages[i] = UnsafeRawPointer(contents[mfn] ?? Self.zeroPage)
            }
            framesLent &+= UInt64(n)
            lentMappings += 1
            return FrameMapping(pages: pages, errors: errors) { [self] in returnLent() }
        }
        let bytes = max(1, n) * pageSize
        let base = buffers.take(bytes)
        framesCopied &+= UInt64(n)
        for i in 0..<n {
            let mfn = mfns[i]
            let dst = base + i * pageSize
            if mfn >= frameCount || owner[Int(mfn)] != owned || unmappable.contains(mfn) {
                errors[i] = EPERM
                dst.initializeMemory(as: UInt8.self, repeating: 0xA5, count: pageSize)
                continue
            }
            if let src = contents[mfn] {
                dst.copyMemory(from: src, byteCount: pageSize)
            } else {
                dst.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
            }
        }
        let pool = buffers
        return FrameMapping(base: UnsafeRawPointer(base), count: n, errors: errors) { pool.give(base, bytes) }
    }

    /// A lent mapping is gone: pages freed meanwhile can go once none is out.
    private func returnLent() {
        lock.lock(); defer { lock.unlock() }
        lentMappings -= 1
        if lentMappings == 0 {
            for p in freedWhileLent { p.deallocate() }
            freedWhileLent.removeAll()
        }
    }

    public var backendCPUSeconds: Double? {
        lock.lock(); defer { lock.unlock() }
        return Double(hostCPUNanos) / 1e9
    }

    public func mapM2P(maxMFN: UInt64) throws(HostError) -> M2PMapping {
        lock.lock(); defer { lock.unlock() }
        var entries = m2p.count
        if let f = hostFault(.mapM2P) {
            if f.kind == .m2pMapShort {
                entries = Int(min(UInt64(entries), f.entries))
            } else {
                // The Xen backend's wording for a failed xc_map_m2p.
                throw HostError.system(operation: "map the M2P table up to MFN 0x\(String(maxMFN, radix: 16))", errno: f.errno)
            }
        }
        // The table lives as long as the host; the mapping keeps the host alive.
        return M2PMapping(entries: UnsafeBufferPointer(rebasing: m2p[0..<entries])) { [self] in _ = self }
    }

    /// How many of the domain's P2M pages the builder had to place outside its
    /// pseudo-physical map (a guest with too little RAM to hold its own P2M).
    public func structureFramesOutsideP2M(_ domid: DomID) -> Int {
        lock.lock(); defer { lock.unlock() }
        return domains[domid]?.structureFramesOutsideP2M ?? 0
    }

    public func domainName(_ domid: DomID) -> String? {
        lock.lock(); defer { lock.unlock() }
        return domains[domid]?.name
    }

    // MARK: - Domain lifecycle

    /// Destroys a domain: its frames return to the host, its M2P entries become invalid.
    public func destroy(_ domid: DomID) {
        lock.lock(); defer { lock.unlock() }
        destroyLocked(domid)
    }

    func destroyLocked(_ domid: DomID) {
        guard domains.removeValue(forKey: domid) != nil else { return }
        let o = UInt16(truncatingIfNeeded: domid)
        for f in 0..<Int(nextFree) where owner[f] == o { freeFrame(UInt64(f)) }
        mapCalls[domid] = nil
    }

    /// Domain ids in use.
    public var domids: [DomID] {
        lock.lock(); defer { lock.unlock() }
        return domains.keys.sorted()
    }

    /// Frames the host has handed out (for tests of memory use).
    public var framesInUse: UInt64 {
        lock.lock(); defer { lock.unlock() }
        return nextFree - UInt64(freeList.count)
    }
}

public enum SimError: Error, Equatable, CustomStringConvertible {
    case outOfMemory
    case noSuchDomain(DomID)
    case domainExists(DomID)
    case invalidSpec(String)
    case cannotInject(String)

    public var description: String {
        switch self {
        case .outOfMemory: return "simulated host is out of machine frames (raise host memory in the scenario)"
        case .noSuchDomain(let d): return "no simulated domain \(d)"
        case .domainExists(let d): return "simulated domain \(d) already exists"
        case .invalidSpec(let s): return "invalid guest spec: \(s)"
        case .cannotInject(let s): return "cannot inject fault: \(s)"
        }
    }
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID).
func threadCPUNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Page-aligned buffers kept for reuse, a few per size.
final class BufferPool: @unchecked Sendable {
    private let lock = NSLock()
    private var idle: [Int: [UnsafeMutableRawPointer]] = [:]
    static let keepPerSize = 8

    func take(_ bytes: Int) -> UnsafeMutableRawPointer {
        lock.lock()
        let b = idle[bytes]?.popLast()
        lock.unlock()
        return b ?? .allocate(byteCount: bytes, alignment: pageSize)
    }

    func give(_ b: UnsafeMutableRawPointer, _ bytes: Int) {
        lock.lock()
        if idle[bytes, default: []].count < Self.keepPerSize {
            idle[bytes, default: []].append(b)
            lock.unlock()
        } else {
            lock.unlock()
            b.deallocate()
        }
    }

    deinit {
        for list in idle.values { for b in list { b.deallocate() } }
    }
}

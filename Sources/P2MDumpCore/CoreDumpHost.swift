#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import P2MEngine

public struct CoreDumpOptions: Sendable, Equatable {
    /// The domid reports carry (a dump does not record the domain's id).
    public var domid: DomID = 0
    /// The name reports carry; nil: the file's name.
    public var name: String?
    /// Overrides the guest width found in the file.
    public var guestWidth: GuestWidth?
    /// Largest machine-frame span (max gmfn + 1) the offline M2P may cover; nil: the default
    /// bound, max(64 x pages in the dump, 2^24 frames). The M2P costs 8 bytes per frame of
    /// the span, so the default is at most 512 bytes per dumped page or 128 MiB, whichever
    /// is larger; raise it for a small guest dumped on a host with more than 64 GiB above it.
    public var maxHostFrames: UInt64?

    public init(domid: DomID = 0, name: String? = nil, guestWidth: GuestWidth? = nil, maxHostFrames: UInt64? = nil) {
        self.domid = domid
        self.name = name
        self.guestWidth = guestWidth
        self.maxHostFrames = maxHostFrames
    }

    public static let spanPerPage: UInt64 = 64
    public static let minimumSpan: UInt64 = 1 << 24
    /// Never more, whatever the caller asks: 2^40 frames is a 4 PiB host.
    public static let hardSpanLimit: UInt64 = 1 << 40

    func spanLimit(pages: UInt64) -> UInt64 {
        let byPages = pages.multipliedReportingOverflow(by: Self.spanPerPage)
        let d = max(byPages.overflow ? Self.hardSpanLimit : byPages.partialValue, Self.minimumSpan)
        return min(maxHostFrames ?? d, Self.hardSpanLimit)
    }
}

/// A dump-core file as a host with one domain, for the engine:
///  - frames by gmfn: `.xen_p2m` says which gmfn each page of `.xen_pages` holds; a sorted
///    index of packed (gmfn, page) keys answers lookups by binary search (8 bytes per
///    dumped page). A gmfn the dump does not hold fails with ENOENT, like a frame the
///    domain does not own fails to map on a live host.
///  - the M2P: built from `.xen_p2m` (gmfn -> pfn), dense as the engine wants it, INVALID
///    where the dump holds no frame. It is what xl saw when it wrote the dump, so offline
///    it cross-checks the P2M walked from the dumped pages against the table written
///    beside them, not against Xen's M2P (which no dump contains).
///  - max MFN: the highest gmfn in the dump; tot_pages and max_pages: the header's page
///    count (xl's tot_pages at the start of the dump); nr_gpfns: the published max_pfn,
///    as Xen derives it for PV guests (a dump does not record it separately).
public final class CoreDumpHost: P2MHost, @unchecked Sendable {
    public let backendName = "core"
    public let dump: CoreDump
    public let domid: DomID
    private let name: String?
    private let sharedInfo: [UInt8]
    private let maxGmfn: UInt64
    private let m2p: UnsafeMutableBufferPointer<UInt64>
    /// (gmfn << indexBits) | page index, sorted: lowest page first for a gmfn dumped twice.
    private let index: [UInt64]
    private let indexBits: UInt64

    public convenience init(path: String, options: CoreDumpOptions = CoreDumpOptions()) throws(CoreDumpError) {
        try self.init(dump: CoreDump(path: path, guestWidth: options.guestWidth), options: options)
    }

    public init(dump: CoreDump, options: CoreDumpOptions = CoreDumpOptions()) throws(CoreDumpError) {
        self.dump = dump
        domid = options.domid
        name = options.name ?? dump.path.split(separator: "/").last.map(String.init)
        sharedInfo = dump.sharedInfoPage() ?? []
        let count = dump.pageCount
        indexBits = UInt64(max(1, UInt64.bitWidth - count.leadingZeroBitCount))

        guard dump.domainType == .pv else {
            // Auto-translated guests have no P2M of their own: nothing to index.
            maxGmfn = 0
            m2p = .allocate(capacity: 1)
            m2p.initialize(repeating: .max)
            index = []
            return
        }

        let invalid = DumpCoreFormat.invalidFrame
        let section = DumpCoreFormat.sectionP2M
        var top: UInt64 = 0
        var real: UInt64 = 0
        var sortedByPfn = true
        var previous: UInt64?
        for i in 0..<count {
            let (pfn, gmfn) = dump.p2mEntry(i)
            if pfn == invalid && gmfn == invalid { continue }
            if pfn == invalid { throw .badEntry(section: section, index: i, reason: "pfn is INVALID but gmfn is \(hex(gmfn)) (only padding entries may be INVALID, and then both halves are)") }
            if gmfn == invalid { throw .badEntry(section: section, index: i, reason: "gmfn is INVALID for pfn \(hex(pfn)) (only padding entries may be INVALID, and then both halves are)") }
            top = max(top, gmfn)
            real &+= 1
            if let p = previous, pfn <= p { sortedByPfn = false }
            previous = pfn
        }
        let limit = options.spanLimit(pages: count)
        if real > 0 && top >= limit {
            throw .frameSpanTooLarge(maxGmfn: top, limit: limit, pages: count)
        }
        guard top < UInt64(1) << (64 - indexBits) else {
            throw .unsupported("gmfn \(hex(top)) and \(count) pages do not fit the reader's 64-bit frame index")
        }

        // xl lists pfns in ascending order; any other order is legal but must still name
        // each pfn once, or the dump would give one pfn two frames.
        if !sortedByPfn {
            var pfns: [UInt64] = []
            pfns.reserveCapacity(Int(real))
            for i in 0..<count {
                let e = dump.p2mEntry(i)
                if e.pfn != invalid { pfns.append(e.pfn) }
            }
            pfns.sort()
            var dup: UInt64?
            for k in pfns.indices.dropFirst() where pfns[k] == pfns[k - 1] {
                dup = pfns[k]
                break
            }
            pfns = []
            if let d = dup {
                var seen: [UInt64] = []
                for i in 0..<count where dump.p2mEntry(i).pfn == d {
                    seen.append(i)
                    if seen.count == 2 { break }
                }
                throw .duplicatePfn(pfn: d, firstEntry: seen[0], secondEntry: seen[1])
            }
        }

        // Duplicate gmfns are kept: xl writes one for every pfn of a guest whose P2M names
        // a frame twice, and that is exactly the corruption the engine reports
        // (duplicate_mfn). The M2P keeps the lowest pfn, as Xen's would have.
        maxGmfn = top
        m2p = .allocate(capacity: Int(top) + 1)
        m2p.initialize(repeating: .max)
        var keys: [UInt64] = []
        keys.reserveCapacity(Int(real))
        for i in 0..<count {
            let (pfn, gmfn) = dump.p2mEntry(i)
            if pfn == invalid { continue }
            m2p[Int(gmfn)] = min(m2p[Int(gmfn)], pfn)
            keys.append(gmfn << indexBits | i)
        }
        keys.sort()
        index = keys
    }

    deinit { m2p.deallocate() }

    /// Page index in `.xen_pages` of the first dumped copy of `gmfn`.
    func pageIndex(of gmfn: UInt64) -> UInt64? {
        guard gmfn < UInt64(1) << (64 - indexBits) else { return nil }
        let key = gmfn << indexBits
        var lo = 0, hi = index.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if index[mid] < key { lo = mid + 1 } else { hi = mid }
        }
        guard lo < index.count, index[lo] >> indexBits == gmfn else { return nil }
        return index[lo] & ((UInt64(1) << indexBits) - 1)
    }

    private func check(_ d: DomID) throws(HostError) {
        guard d == domid else { throw HostError.domainNotFound(d) }
    }

    // MARK: - P2MHost

    public func listDomains() throws(HostError) -> [DomainInfo] { [info] }

    public func domainInfo(_ d: DomID) throws(HostError) -> DomainInfo {
        try check(d)
        return info
    }

    private var info: DomainInfo {
        DomainInfo(domid: domid, type: dump.domainType, totPages: dump.info.nrPages, maxPages: dump.info.nrPages,
                   sharedInfoFrame: 0, uuid: [])
    }

    public func guestWidth(_ d: DomID) throws(HostError) -> GuestWidth {
        try check(d)
        return dump.guestWidth ?? .bits64
    }

    public func nrGpfns(_ d: DomID) throws(HostError) -> UInt64 {
        try check(d)
        guard let w = dump.guestWidth, let si = ArchSharedInfo(page: sharedInfo, width: w) else {
            throw HostError.unsupported("nr_gpfns of an auto-translated guest's dump")
        }
        return max(si.maxPfn, 1)
    }

    public func maxMFN() throws(HostError) -> UInt64 { maxGmfn }

    public func sharedInfoPage(_ d: DomID, frame: UInt64) throws(HostError) -> [UInt8] {
        try check(d)
        guard sharedInfo.count == pageSize else {
            throw HostError.system(operation: "read \(DumpCoreFormat.sectionSharedInfo) of \(dump.path)", errno: ENOENT)
        }
        return sharedInfo
    }

    public func mapFrames(_ d: DomID, _ mfns: UnsafeBufferPointer<UInt64>) throws(HostError) -> FrameMapping {
        try check(d)
        let n = mfns.count
        let base = UnsafeMutableRawPointer.allocate(byteCount: max(1, n) * pageSize, alignment: pageSize)
        var errors = [Int32](repeating: 0, count: n)
        for i in 0..<n {
            let dst = base + i * pageSize
            if let p = pageIndex(of: mfns[i]) {
                dst.copyMemory(from: dump.pageAddress(p), byteCount: pageSize)
            } else {
                errors[i] = ENOENT
                dst.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
            }
        }
        return FrameMapping(base: UnsafeRawPointer(base), count: n, errors: errors) { base.deallocate() }
    }

    public func mapM2P(maxMFN: UInt64) throws(HostError) -> M2PMapping {
        // The table lives as long as the host; the mapping keeps the host alive.
        M2PMapping(entries: UnsafeBufferPointer(m2p)) { [self] in _ = self }
    }

    public func domainName(_ d: DomID) -> String? { d == domid ? name : nil }
}

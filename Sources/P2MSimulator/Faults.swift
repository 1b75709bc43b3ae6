import Foundation
import P2MEngine

/// Faults the simulator can inject. Each one models a concrete way a guest or host goes
/// wrong and is meant to produce exactly one finding kind (see `expectedFinding`).
public enum SimFault: Sendable, Equatable {
    /// Xen's M2P says another pfn owns this pfn's frame.
    case m2pMismatch(pfn: UInt64)
    /// `pfn` names the frame already used by `sameAs` (a lower pfn).
    case duplicateMfn(pfn: UInt64, sameAs: UInt64)
    /// `pfn` names a frame above the host's max MFN.
    case mfnOutOfRange(pfn: UInt64)
    /// An unpopulated `pfn` in a private leaf gets an identity entry for another pfn.
    case identityMismatch(pfn: UInt64)
    /// The frame behind `pfn` refuses to be mapped (seen only when data frames are probed).
    case unmappableDataFrame(pfn: UInt64)
    /// The tree's copy of the leaf holding `pfn` differs from the list's in that entry.
    case treeListMismatch(pfn: UInt64)
    /// fll entry `index` becomes 0.
    case zeroFllEntry(index: Int)
    /// The list's PTE for `leaf` names a frame beyond the host.
    case badPteFrame(leaf: Int)
    /// The leaf page `leaf` refuses to be mapped.
    case unmappableLeaf(leaf: Int)
    /// Leaf slot `leaf` (tree and list) names the private leaf of `sameAs`.
    case sharedLeaf(leaf: Int, sameAs: Int)
    /// The L2 entry covering `leaf` points back at the page-table root.
    case pageTableCycle(leaf: Int)
    /// The list's PTE for `leaf` is not present.
    case pteNotPresent(leaf: Int)
    /// The 512 leaves of L1 range `chunk` are remapped with one 2 MiB page.
    case largePage(chunk: Int)
    /// p2m_vaddr is replaced (e.g. non-canonical).
    case listVaddr(UInt64)
    /// Published max_pfn is replaced.
    case publishedMaxPfn(UInt64)
    /// fll = 0 and p2m_cr3 = 0, as in early boot.
    case unpublished
    /// p2m_generation moves on every read of the shared info.
    case generationAlwaysMoving
    /// The domain owns pages that are not in its P2M.
    case extraOwnedPages(UInt64)
    /// Xen's nr_gpfns differs from the published max_pfn.
    case nrGpfns(UInt64)
    /// The domain is destroyed after this many map calls.
    case vanishAfterMapCalls(Int)
    /// Every map call for the domain fails with EFAULT.
    case allMapsFail
    /// The P2M entry of the pfn holding leaf page `leaf` is cleared (or, with
    /// `otherFrame`, made to name another frame of the guest): the leaf frame stays the
    /// P2M's but leaves the pseudo-physical map, as the bed's guest module does.
    case leafOutsidePhysmap(leaf: Int, otherFrame: Bool)
    /// shared_info.arch.pfn_to_mfn_frame_list_list is replaced (the list stays intact).
    case frameListList(UInt64)
    /// shared_info.arch.p2m_cr3 is replaced (0: the toolstack falls back to the tree).
    case p2mCr3(UInt64)
    /// The tree's frame-list (mid) entry for `leaf` becomes 0.
    case zeroMidEntry(leaf: Int)

    /// Every finding kind this fault produces on its own: a duplicate frame is also an
    /// M2P mismatch for the pfn that does not own it.
    public var expectedFindings: Set<FindingKind> {
        guard let k = expectedFinding else { return [] }
        if case .duplicateMfn = self { return [k, .m2pMismatch] }
        // The cleared pfn's frame is still the domain's: one populated page fewer than
        // tot_pages; naming another frame instead makes that pfn an impostor.
        if case .leafOutsidePhysmap(_, let other) = self { return other ? [k, .m2pMismatch, .duplicateMfn] : [k, .populatedMismatch] }
        return [k]
    }

    /// The finding this fault is about (nil: the scan errors out).
    public var expectedFinding: FindingKind? {
        switch self {
        case .m2pMismatch: return .m2pMismatch
        case .duplicateMfn: return .duplicateMfn
        case .mfnOutOfRange: return .mfnOutOfRange
        case .identityMismatch: return .identityMismatch
        case .unmappableDataFrame: return .frameUnmappable
        case .treeListMismatch: return .treeListMismatch
        case .zeroFllEntry, .badPteFrame: return .structureMfnInvalid
        case .unmappableLeaf: return .structureUnmappable
        case .sharedLeaf: return .sharedFrameMisuse
        case .pageTableCycle: return .structureCycle
        case .pteNotPresent: return .pteNotPresent
        case .largePage: return .largePageMapping
        case .listVaddr: return .listVaddrInvalid
        case .publishedMaxPfn: return .maxPfnImplausible
        case .unpublished: return .p2mNotPublished
        case .generationAlwaysMoving: return .p2mUnstable
        case .extraOwnedPages: return .populatedMismatch
        case .nrGpfns: return .maxPfnNrGpfnsMismatch
        case .vanishAfterMapCalls, .allMapsFail: return nil
        case .leafOutsidePhysmap: return .p2mFrameOutsidePhysmap
        case .frameListList, .zeroMidEntry: return .structureMfnInvalid
        case .p2mCr3: return .structureMfnInvalid
        }
    }
}

extension SimulatedHost {
    public func inject(_ fault: SimFault, into domid: DomID) throws(SimError) {
        lock.lock(); defer { lock.unlock() }
        guard let d = domains[domid] else { throw SimError.noSuchDomain(domid) }
        let fpp = UInt64(d.fpp)
        func populatedFrame(_ pfn: UInt64) throws(SimError) -> UInt64 {
            let e = entry(d, pfn)
            guard e != .max, e & P2MEntry.identityBit(d.width) == 0, e & P2MEntry.foreignBit(d.width) == 0 else {
                throw SimError.cannotInject("pfn \(pfn) of domain \(domid) is not populated")
            }
            guard contents[e] == nil else { throw SimError.cannotInject("pfn \(pfn) holds one of the guest's P2M pages") }
            return e
        }
        func privateLeaf(_ k: Int) throws(SimError) -> UInt64 {
            guard k >= 0, k < d.leafFrames.count else { throw SimError.cannotInject("leaf \(k) outside the P2M") }
            let f = d.leafFrames[k]
            guard f != d.missingLeaf, f != d.identityLeaf else { throw SimError.cannotInject("leaf \(k) is a shared page") }
            return f
        }
        func setEntry(_ pfn: UInt64, _ v: UInt64) {
            store(d.leafFrames[Int(pfn / fpp)], Int(pfn % fpp), v, bytes: d.entryBytes)
        }
        func requireList() throws(SimError) {
            guard d.hasList else { throw SimError.cannotInject("domain \(domid) has no linear list") }
        }

        switch fault {
        case .m2pMismatch(let pfn):
            let mfn = try populatedFrame(pfn)
            m2p[Int(mfn)] = pfn ^ 0x1_0000_0000 // a pfn no guest has
        case .duplicateMfn(let pfn, let other):
            guard other < pfn else { throw SimError.cannotInject("duplicate must name a lower pfn") }
            let target = try populatedFrame(other)
            let own = try populatedFrame(pfn)
            setEntry(pfn, target)
            // Release the frame it used to name, so tot_pages still equals the
            // populated entries and the duplicate is the only inconsistency.
            freeFrame(own)
        case .mfnOutOfRange(let pfn):
            let own = try populatedFrame(pfn)
            freeFrame(own)
            let bad = d.width == .bits64 ? frameCount + 5 : min(frameCount + 5, (1 << 30) - 1)
            guard bad >= frameCount else { throw SimError.cannotInject("host too large for an out-of-range 32-bit MFN") }
            setEntry(pfn, bad)
        case .identityMismatch(let pfn):
            guard entry(d, pfn) == .max else { throw SimError.cannotInject("pfn \(pfn) is not unpopulated") }
            _ = try privateLeaf(Int(pfn / fpp))
            setEntry(pfn, P2MEntry.identity(pfn &+ 1, d.width))
        case .unmappableDataFrame(let pfn):
            unmappable.insert(try populatedFrame(pfn))
        case .treeListMismatch(let pfn):
            guard d.hasTree, d.hasList else { throw SimError.cannotInject("needs both formats") }
            let k = Int(pfn / fpp)
            let leaf = try privateLeaf(k)
            let copy = try allocFrame(for: domid)
            page(copy).copyMemory(from: page(leaf), byteCount: pageSize)
            let old = load(copy, Int(pfn % fpp), bytes: d.entryBytes)
            store(copy, Int(pfn % fpp), old == .max ? 0x1234 : old ^ 1, bytes: d.entryBytes)
            store(d.mids[k / d.fpp], k % d.fpp, copy, bytes: d.entryBytes)
        case .zeroFllEntry(let index):
            guard d.hasTree, index < d.fpp else { throw SimError.cannotInject("no fll entry \(index)") }
            store(d.fll, index, 0, bytes: d.entryBytes)
        case .badPteFrame(let k):
            try requireList()
            _ = try privateLeaf(k)
            let (l1, i) = try l1Table(d, leaf: k)
            store(l1, i, ((frameCount + 7) << pageShift) | leafFlags, bytes: 8)
        case .unmappableLeaf(let k):
            unmappable.insert(try privateLeaf(k))
        case .sharedLeaf(let k, let other):
            _ = try privateLeaf(other)
            _ = try privateLeaf(k)
            guard other < k else { throw SimError.cannotInject("sharedLeaf must reuse a lower leaf") }
            let target = d.leafFrames[other]
            if d.hasList {
                let (l1, i) = try l1Table(d, leaf: k)
                store(l1, i, (target << pageShift) | leafFlags, bytes: 8)
            }
            if d.hasTree { store(d.mids[k / d.fpp], k % d.fpp, target, bytes: d.entryBytes) }
            d.leafFrames[k] = target
        case .pageTableCycle(let k):
            try requireList()
            _ = try privateLeaf(k)
            let (t, i) = try l2Table(d, leaf: k)
            store(t, i, (d.ptRoot << pageShift) | tableFlags, bytes: 8)
        case .pteNotPresent(let k):
            try requireList()
            _ = try privateLeaf(k)
            let (l1, i) = try l1Table(d, leaf: k)
            store(l1, i, load(l1, i, bytes: 8) & ~1, bytes: 8)
        case .largePage(let chunk):
            try requireList()
            let first = chunk * 512
            guard first + 512 <= d.leafFrames.count else { throw SimError.cannotInject("chunk \(chunk) outside the list") }
            for k in first..<(first + 512) { _ = try privateLeaf(k) }
            let base = try allocContiguous(512, align: 512, for: domid)
            for j in 0..<512 {
                page(base + UInt64(j)).copyMemory(from: page(d.leafFrames[first + j]), byteCount: pageSize)
            }
            try setL2(d, leaf: first, value: (base << pageShift) | tableFlags | pse | nx)
        case .listVaddr(let v):
            try requireList()
            d.shared.p2mVaddr = v
        case .publishedMaxPfn(let v):
            d.shared.maxPfn = v
            d.nrGpfnsOverride = v
        case .unpublished:
            d.shared.frameListList = 0
            d.shared.p2mCr3 = 0
        case .generationAlwaysMoving:
            d.faults.generationAlwaysMoving = true
        case .extraOwnedPages(let n):
            d.extraOwnedPages &+= n
        case .nrGpfns(let n):
            d.nrGpfnsOverride = n
        case .vanishAfterMapCalls(let n):
            d.faults.vanishAfterMapCalls = (mapCalls[domid] ?? 0) + n
        case .allMapsFail:
            d.faults.allMapsFail = true
        case .leafOutsidePhysmap(let k, let other):
            let frame = try privateLeaf(k)
            let pfn = m2p[Int(frame)]
            guard pfn < d.shared.maxPfn, entry(d, pfn) == frame else { throw SimError.cannotInject("leaf \(k)'s frame is not named by a pfn") }
            if other {
                // Another pfn's ordinary frame (the lowest populated RAM page).
                var donor: UInt64 = 0
                while donor < d.shared.maxPfn {
                    let e = entry(d, donor)
                    if donor != pfn, e != .max, e & P2MEntry.identityBit(d.width) == 0, e & P2MEntry.foreignBit(d.width) == 0, contents[e] == nil { break }
                    donor += 1
                }
                guard donor < d.shared.maxPfn else { throw SimError.cannotInject("no ordinary frame to name") }
                setEntry(pfn, entry(d, donor))
            } else {
                setEntry(pfn, .max)
                d.populatedCount -= 1
                d.extraOwnedPages &+= 1
            }
        case .frameListList(let v):
            d.shared.frameListList = v
        case .p2mCr3(let v):
            d.shared.p2mCr3 = v
        case .zeroMidEntry(let k):
            guard d.hasTree, k < d.leafCount, d.mids[k / d.fpp] != d.midMissing else { throw SimError.cannotInject("leaf \(k) has no private frame-list page") }
            store(d.mids[k / d.fpp], k % d.fpp, 0, bytes: d.entryBytes)
        }
    }
}

/// A fault of the simulated host itself rather than of one guest: the host-wide calls
/// (listing domains, mapping the M2P) fail for a window of calls, so a test can watch the
/// daemon lose and regain the host. Calls are counted from 1 per operation (listing;
/// mapping the M2P, shared by both M2P kinds); the fault hits
/// calls `after + 1 ... after + count` (every later call when `count` is nil). The daemon
/// lists domains once per poll and maps the M2P once per scan of a PV domain.
public struct HostFault: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        /// Listing domains (xc_domain_getinfolist) fails with `errno`.
        case listDomainsFails = "list_domains_fails"
        /// Mapping the M2P table (xc_map_m2p) fails with `errno`.
        case m2pMapFails = "m2p_map_fails"
        /// The M2P mapping "succeeds" but covers only the first `entries` frames.
        case m2pMapShort = "m2p_map_short"

        /// The host call it hits.
        public var operation: Operation { self == .listDomainsFails ? .listDomains : .mapM2P }
    }

    public enum Operation: Sendable, Hashable {
        case listDomains
        case mapM2P
    }

    public var kind: Kind
    /// The failure reported (unused by `m2pMapShort`, which does not fail).
    public var errno: Int32
    /// Calls that succeed before the fault starts.
    public var after: Int
    /// Calls that fail; nil: every call after `after`.
    public var count: Int?
    /// For `m2pMapShort`: entries the mapping covers.
    public var entries: UInt64

    public init(kind: Kind, errno: Int32 = EIO, after: Int = 0, count: Int? = nil, entries: UInt64 = 16) {
        self.kind = kind
        self.errno = errno
        self.after = after
        self.count = count
        self.entries = entries
    }

    /// Whether the `call`-th call (1-based) of its kind is hit.
    public func hits(call: Int) -> Bool {
        guard call > after else { return false }
        guard let count else { return true }
        return call <= after + count
    }
}

extension SimulatedHost {
    /// Replaces the host-wide faults and restarts their call counters.
    public func setHostFaults(_ faults: [HostFault]) {
        lock.lock(); defer { lock.unlock() }
        hostFaults = faults
        hostCalls = [:]
    }

    /// Counts one host-wide call and returns the first fault that hits it (callers hold
    /// the lock).
    func hostFault(_ op: HostFault.Operation) -> HostFault? {
        let n = (hostCalls[op] ?? 0) + 1
        hostCalls[op] = n
        return hostFaults.first { $0.kind.operation == op && $0.hits(call: n) }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// A model of what libxenguest does with a PV guest's P2M, written from reading
// xen-project/xen tools/libs/guest (RELEASE-4.17.0 and RELEASE-4.20.0, same checks):
//
//  save/migrate  xg_sr_save_x86_pv.c: map_p2m() reads max_pfn - 1 and takes the linear
//                list whenever p2m_cr3 != 0 (map_p2m_list), the tree otherwise
//                (map_p2m_tree); both bound every structure frame by 0 < mfn <= max_mfn
//                only, trim max_pfn by trailing identical entries, then map_p2m_leaves()
//                requires each leaf frame to be in the pseudo-physical map
//                (xg_sr_common_x86_pv.c: mfn_in_pseudophysmap). Pages are then copied
//                by pfn (xg_sr_save.c: write_batch): a frame the domain does not own is
//                typed XTAB by Xen and silently left out; a frame of the guest's own is
//                copied whatever pfn Xen's M2P gives it.
//  dump-core     xg_core_x86.c: sized from nr_gpfns, the list whenever p2m_cr3 != 0,
//                no max_mfn bound on page-table frames, no check of the tree's entries,
//                no generation check; xg_core.c skips INVALID, > max_mfn and unmappable
//                frames silently and keeps at most tot_pages of them.
//
// The walk here repeats libxenguest's arithmetic on purpose (32-bit counters, masked
// virtual addresses in messages, its trimming rules), because the prediction must say
// what libxenguest prints, not what a correct walker would find. Everything read from
// the guest is still bounded before use: a value libxenguest would use out of bounds
// ends the prediction as `fails` with that said, never as an out-of-bounds read here.

/// Where each check lives, for the report.
enum XenSource {
    static let save = "tools/libs/guest/xg_sr_save_x86_pv.c"
    static let core = "tools/libs/guest/xg_core_x86.c"
    static let mapP2mTree = save + ":map_p2m_tree"
    static let mapP2mList = save + ":map_p2m_list"
    static let mapP2mLeaves = save + ":map_p2m_leaves"
    static let generation = save + ":x86_pv_check_vm_state_p2m_list"
    static let writeBatch = "tools/libs/guest/xg_sr_save.c:write_batch"
    static let coreList = core + ":xc_core_arch_map_p2m_list_rw"
    static let coreTree = core + ":xc_core_arch_map_p2m_tree_rw"
    static let coreMap = core + ":xc_core_arch_map_p2m_rw"
    static let corePages = "tools/libs/guest/xg_core.c:xc_domain_dumpcore_via_callback"
}

/// C's `%#lx`: 0 prints as "0", anything else with a 0x prefix.
func cHex(_ v: UInt64) -> String { v == 0 ? "0" : "0x" + String(v, radix: 16) }

/// libxenctrl's PERROR suffix: " (errno = strerror)".
func perror(_ message: String, _ err: Int32) -> String {
    "\(message) (\(err) = \(String(cString: strerror(err))))"
}

/// One leaf frame that fails mfn_in_pseudophysmap.
struct OutsideLeaf {
    var index: Int
    var mfn: UInt64
    /// m2p[mfn], when mfn <= max_mfn.
    var m2p: UInt64?
    /// p2m[m2p[mfn]], when that pfn is <= max_pfn.
    var p2m: UInt64?
    /// Offline only: the dump holds no copy of this frame (so whether it was outside the
    /// map or refused to map live cannot be told apart).
    var notInDump = false
}

/// What the save path's setup (map_p2m) comes to.
struct SaveSetup {
    var path: P2MFormat
    var pathReason: String
    var failure: [String]?
    var source: String?
    var detail: String = ""
    /// Trimmed max_pfn (the last pfn, as libxenguest keeps it).
    var maxPfn: UInt64 = 0
    var leaves: [UInt64] = []
    var outside: [OutsideLeaf] = []
}

final class ToolstackModel {
    let session: HostSession
    let width: GuestWidth
    let maxMFN: UInt64
    let m2p: UnsafeBufferPointer<UInt64>
    let si: ArchSharedInfo
    let sampleLimit: Int
    /// Most leaf frames a walk here maps: what the scan allowed for this guest (its
    /// max_pfn after the plausibility clamp). libxenguest has no such bound.
    let leafCap: UInt64
    /// A dump-core file: a frame the dump does not hold is one no pfn named when xl wrote
    /// it, i.e. outside the pseudo-physical map, not a frame that refuses to map; and
    /// max_mfn and the M2P are the dump's own (highest gmfn, .xen_p2m), not Xen's.
    let offline: Bool
    /// Leaf frames the scan has already mapped without an error: a toolstack walk that
    /// ends in the same frames need not map them again to know they map.
    var knownMappable: Set<UInt64> = []
    /// Most distinct leaf frames a check maps: the pfns the domain could own (the scan's
    /// bound before the fixed pseudo-physical allowance) over entries per frame. More
    /// distinct frames than that cannot all be the domain's own.
    var distinctLeafCap: UInt64 = .max

    init(session: HostSession, width: GuestWidth, maxMFN: UInt64, m2p: UnsafeBufferPointer<UInt64>, shared: ArchSharedInfo,
         sampleLimit: Int, walkMaxPfn: UInt64) {
        self.leafCap = walkMaxPfn / UInt64(width.fpp) + 2
        offline = session.host.backendName == "core"
        self.session = session
        self.width = width
        self.maxMFN = maxMFN
        self.m2p = m2p
        self.si = shared
        self.sampleLimit = max(1, sampleLimit)
    }

    var fpp: UInt64 { UInt64(width.fpp) }

    /// GET_FIELD of the fll: the guest-width word, zero-extended (a 32-bit ~0 stays 0xffffffff).
    var rawFll: UInt64 { width == .bits32 && si.frameListList == .max ? 0xffff_ffff : si.frameListList }

    // MARK: - Reading frames as libxenguest maps them

    /// xc_map_foreign_pages: all or nothing; the errno of the first frame that failed.
    /// A map of no frames fails there with EINVAL (an mmap of length 0), so it is not
    /// asked of the host: xl dump-core of a guest whose nr_gpfns is 0 gets this far.
    private func mapAll(_ mfns: ArraySlice<UInt64>) throws(HostError) -> (FrameMapping?, Int32) {
        if mfns.isEmpty { return (nil, EINVAL) }
        let m = try session.map(Array(mfns))
        if let e = m.errors.first(where: { $0 != 0 }) { return (nil, e) }
        return (m, 0)
    }

    /// Maps `mfns` in batches only to learn whether libxenguest's single map would succeed.
    /// Each distinct frame not already known to map is mapped once (a sparse P2M names its
    /// shared missing-entries page thousands of times); nil when there are more of them
    /// than `distinctLeafCap`, which the caller reports without mapping anything.
    private func firstMapError(_ mfns: [UInt64]) throws(HostError) -> Int32? {
        if mfns.isEmpty { return EINVAL }
        var seen = Set<UInt64>(), todo: [UInt64] = []
        for m in mfns where !knownMappable.contains(m) && seen.insert(m).inserted {
            todo.append(m)
            if UInt64(todo.count) > distinctLeafCap { return nil }
        }
        var i = 0
        while i < todo.count {
            let end = min(todo.count, i + session.batchFrames)
            let m = try session.map(Array(todo[i..<end]))
            if let e = m.errors.first(where: { $0 != 0 }) { return e }
            i = end
        }
        return 0
    }

    /// Why a leaf list with more distinct frames than `distinctLeafCap` cannot map.
    private func tooManyLeafFrames(_ n: Int) -> String {
        "libxenguest would map more than \(distinctLeafCap) distinct leaf frames (the list has \(n) entries), more than this domain can own: a foreign map of frames the domain does not own fails"
    }

    private func word(_ page: UnsafeRawPointer, _ i: Int) -> UInt64 {
        switch width {
        case .bits64: return page.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)
        case .bits32:
            let v = page.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self)
            return v == .max ? .max : UInt64(v)
        }
    }

    /// Entries `0..<count` of consecutive guest-width pages (copy_mfns_from_guest).
    private func words(_ m: FrameMapping, count: Int) -> [UInt64] {
        let per = width.fpp
        return (0..<count).map { word(m.page($0 / per)!, $0 % per) }
    }

    private func pte(_ m: FrameMapping, _ idx: Int) -> UInt64 {
        m.page(idx / 512)!.loadUnaligned(fromByteOffset: (idx % 512) &* 8, as: UInt64.self)
    }

    // MARK: - Save / migrate: map_p2m

    func saveSetup() throws(HostError) -> SaveSetup {
        let maxPfn = si.maxPfn &- 1
        if si.p2mCr3 != 0 {
            var s = SaveSetup(path: .linearList, pathReason: "p2m_cr3 is \(cHex(si.p2mCr3)) (not 0): libxenguest reads the linear list and ignores the tree")
            try saveList(&s, maxPfn: maxPfn)
            return s
        }
        let why = si.frameListList == .max || si.frameListList == 0
            ? "p2m_cr3 is 0: libxenguest falls back to the 3-level tree, and fll is \(cHex(rawFll))"
            : "p2m_cr3 is 0: libxenguest reads the 3-level tree at fll \(cHex(rawFll))"
        var s = SaveSetup(path: .tree, pathReason: why)
        try saveTree(&s, maxPfn: maxPfn)
        return s
    }

    private func fail(_ s: inout SaveSetup, _ lines: [String], _ source: String, _ detail: String = "") {
        s.failure = lines
        s.source = source
        s.detail = detail
    }

    private func saveTree(_ s: inout SaveSetup, maxPfn initialMaxPfn: UInt64) throws(HostError) {
        var maxPfn = initialMaxPfn
        let fpp2 = fpp &* fpp
        var fllEntries = UInt32(truncatingIfNeeded: maxPfn / fpp2 &+ 1)
        if UInt64(fllEntries) > fpp {
            return fail(&s, ["max_pfn \(cHex(maxPfn)) too large for p2m tree"], XenSource.mapP2mTree,
                        "the tree describes at most \(fpp2 * fpp) pfns; only the linear list can describe this guest")
        }
        let fll = rawFll
        if fll == 0 || fll > maxMFN {
            return fail(&s, ["Bad mfn \(cHex(fll)) for p2m frame list list"], XenSource.mapP2mTree)
        }
        let (fllMap, e1) = try mapAll([fll])
        guard let fllMap else {
            return fail(&s, [perror("Failed to map p2m frame list list at \(cHex(fll))", e1)], XenSource.mapP2mTree)
        }
        if fllEntries == 0 {
            return fail(&s, [], XenSource.mapP2mTree,
                        "max_pfn \(cHex(maxPfn)) wraps libxenguest's 32-bit fll_entries to 0: it then reads past a zero-size buffer (undefined behaviour)")
        }
        session.noteRead(bytes: pageSize)
        let localFll = words(fllMap, count: Int(fllEntries))
        var savedMfn: UInt64 = 0
        var savedX = 0
        for (x, m) in localFll.enumerated() {
            if m == 0 || m > maxMFN {
                return fail(&s, ["Bad mfn \(cHex(m)) at index \(x) (of \(fllEntries)) in p2m frame list list"], XenSource.mapP2mTree)
            }
            if m != savedMfn {
                savedMfn = m
                savedX = x
            }
        }
        let trimmed = UInt64(savedX + 1) &* fpp2 &- 1
        if trimmed < maxPfn {
            maxPfn = trimmed
            fllEntries = UInt32(truncatingIfNeeded: maxPfn / fpp2 &+ 1)
        }
        let flEntries = Int(UInt32(truncatingIfNeeded: maxPfn / fpp &+ 1))
        if UInt64(flEntries) > leafCap { return fail(&s, [], XenSource.mapP2mTree, implausible(UInt64(flEntries))) }
        let (flMap, e2) = try mapAll(localFll[0..<Int(fllEntries)])
        guard let flMap else {
            return fail(&s, [perror("Failed to map p2m frame list", e2)], XenSource.mapP2mTree)
        }
        session.noteRead(bytes: Int(fllEntries) * pageSize)
        let localFl = words(flMap, count: flEntries)
        for (x, m) in localFl.enumerated() where m == 0 || m > maxMFN {
            return fail(&s, ["Bad mfn \(cHex(m)) at index \(x) (of \(flEntries)) in p2m frame list"], XenSource.mapP2mTree)
        }
        try mapLeaves(&s, localFl, maxPfn: maxPfn)
    }

    private func saveList(_ s: inout SaveSetup, maxPfn initialMaxPfn: UInt64) throws(HostError) {
        var maxPfn = initialMaxPfn
        let cr3 = si.p2mCr3
        let root: UInt64
        switch width {
        case .bits64: root = cr3 >> 12
        case .bits32: root = cr3 & 0xffff_ffff_0000_0000 != 0 ? UInt64.max : CR3.mfn(cr3, width: .bits32)
        }
        if root == 0 {
            return fail(&s, [], XenSource.mapP2mList,
                        "p2m_cr3 \(cHex(cr3)) names frame 0: libxenguest's assert(p2m_mfn != 0) aborts the save helper")
        }
        if root > maxMFN {
            return fail(&s, ["Bad p2m_cr3 value \(cHex(cr3))"], XenSource.mapP2mList)
        }
        let vaddr = si.p2mVaddr
        var frames = UInt32(truncatingIfNeeded: maxPfn / fpp &+ 1)
        var end = vaddr &+ UInt64(frames) &* UInt64(pageSize) &- 1
        if UInt64(frames) > leafCap { return fail(&s, [], XenSource.mapP2mList, implausible(UInt64(frames))) }
        let mask: UInt64
        let levels: Int
        switch width {
        case .bits64:
            mask = 0x0000_ffff_ffff_ffff
            levels = 4
            func canonical(_ v: UInt64) -> Bool { (Int64(bitPattern: v) >> 47) == (Int64(bitPattern: v) >> 63) }
            if !canonical(vaddr) || !canonical(end) || end < vaddr || (vaddr <= XenVirtualLayout.hypervisorEnd64 && end > XenVirtualLayout.hypervisorStart64) {
                return fail(&s, ["Bad virtual p2m address range \(cHex(vaddr))-\(cHex(end))"], XenSource.mapP2mList)
            }
        case .bits32:
            mask = 0x0000_0000_ffff_ffff
            levels = 3
            if vaddr > mask || end > mask || end < vaddr || (vaddr <= UInt64(UInt32.max) && end > XenVirtualLayout.hypervisorStartPAE) {
                return fail(&s, ["Bad virtual p2m address range \(cHex(vaddr))-\(cHex(end))"], XenSource.mapP2mList)
            }
        }
        var mfns: [UInt64] = [root]
        var off: UInt64 = 0
        var idxStart: UInt32 = 0, idxEnd: UInt32 = 0, savedIdx: UInt32 = 0
        var savedMfn: UInt64 = 0
        for level in stride(from: levels, through: 1, by: -1) {
            let nPages = Int(idxEnd &- idxStart &+ 1)
            guard nPages <= mfns.count else {
                return fail(&s, [], XenSource.mapP2mList, "libxenguest's level-2 trimming leaves it mapping more page-table pages than it collected (undefined behaviour)")
            }
            let (ptes, e) = try mapAll(mfns[0..<nPages])
            guard let ptes else {
                return fail(&s, [perror("Failed to map \(nPages) page table pages for p2m list", e)], XenSource.mapP2mList)
            }
            session.noteRead(bytes: nPages * pageSize)
            let shift = UInt64(level * 9 + 3)
            idxStart = UInt32(truncatingIfNeeded: ((vaddr &- off) & mask) >> shift)
            idxEnd = UInt32(truncatingIfNeeded: ((end &- off) & mask) >> shift)
            guard idxEnd >= idxStart, Int(idxEnd) < nPages * 512 else {
                return fail(&s, [], XenSource.mapP2mList, "libxenguest would index outside the page-table pages it mapped (undefined behaviour)")
            }
            var next: [UInt64] = []
            next.reserveCapacity(Int(idxEnd - idxStart) + 1)
            for idx in idxStart...idxEnd {
                let mfn = (pte(ptes, Int(idx)) & 0x000f_ffff_ffff_f000) >> 12
                if mfn == 0 || mfn > maxMFN {
                    let va = off &+ (UInt64(idx) << shift)
                    return fail(&s, ["Bad mfn \(cHex(mfn)) during page table walk for vaddr \(cHex(va)) at level \(level) of p2m list"], XenSource.mapP2mList)
                }
                next.append(mfn)
                if level == 2 && mfn != savedMfn {
                    savedMfn = mfn
                    savedIdx = idx &- idxStart
                }
            }
            if level == 2 {
                if savedIdx == idxEnd { savedIdx &+= 1 }
                let trimmed = (UInt64(savedIdx) << 9) &* fpp &- 1
                if trimmed < maxPfn {
                    maxPfn = trimmed
                    frames = UInt32(truncatingIfNeeded: (maxPfn &+ fpp) / fpp)
                    end = vaddr &+ UInt64(frames) &* UInt64(pageSize) &- 1
                    idxEnd = idxStart &+ savedIdx
                }
            }
            off = vaddr & ((mask >> shift) << shift)
            mfns = next
        }
        let n = Int(idxEnd &- idxStart &+ 1)
        try mapLeaves(&s, Array(mfns.prefix(n)), maxPfn: maxPfn)
    }

    private func implausible(_ frames: UInt64) -> String {
        "libxenguest would map \(frames) leaf frames for the max_pfn this guest publishes (\(cHex(si.maxPfn))), far beyond what the domain can own: it fails allocating or mapping them"
    }

    /// map_p2m_leaves: one map of every leaf, then mfn_in_pseudophysmap for each.
    private func mapLeaves(_ s: inout SaveSetup, _ leaves: [UInt64], maxPfn: UInt64) throws(HostError) {
        s.maxPfn = maxPfn
        s.leaves = leaves
        var notInDump = Set<UInt64>()
        if offline {
            var i = 0
            while i < leaves.count {
                let chunk = Array(leaves[i..<min(leaves.count, i + session.batchFrames)])
                let m = try session.map(chunk)
                for (k, err) in m.errors.enumerated() where err != 0 { notInDump.insert(chunk[k]) }
                i += chunk.count
            }
        }
        guard let e = offline ? 0 : try firstMapError(leaves) else {
            return fail(&s, [], XenSource.mapP2mLeaves, tooManyLeafFrames(leaves.count))
        }
        if e != 0 {
            return fail(&s, [perror("Failed to map p2m frames", e)], XenSource.mapP2mLeaves)
        }
        // p2m[pfn] for the pfns the M2P gives the leaf frames: read only the leaves
        // holding those entries (Linux allocates its P2M pages together, so few).
        var wanted: [Int: [(leaf: Int, pfn: UInt64)]] = [:]
        var outside: [OutsideLeaf] = []
        for (x, m) in leaves.enumerated() {
            guard m <= maxMFN, Int(m) < m2p.count else {
                outside.append(OutsideLeaf(index: x, mfn: m, m2p: nil, p2m: nil))
                continue
            }
            let pfn = m2p[Int(m)]
            if pfn > maxPfn {
                outside.append(OutsideLeaf(index: x, mfn: m, m2p: pfn, p2m: nil))
                continue
            }
            wanted[Int(pfn / fpp), default: []].append((x, pfn))
        }
        // A pfn at or below max_pfn whose entry lies past the leaf list (the list is shorter
        // than max_pfn says) has no p2m value to compare: no claim is made about it.
        let holders = wanted.keys.sorted().filter { $0 < leaves.count }
        var k = 0
        while k < holders.count {
            let chunk = holders[k..<min(holders.count, k + session.batchFrames)]
            let m = try session.map(chunk.map { leaves[$0] })
            for (slot, h) in chunk.enumerated() {
                guard let page = m.page(slot) else { continue } // mapped above: cannot fail twice
                session.noteRead(bytes: pageSize)
                for w in wanted[h]! {
                    let v = word(page, Int(w.pfn % fpp))
                    if v != leaves[w.leaf] { outside.append(OutsideLeaf(index: w.leaf, mfn: leaves[w.leaf], m2p: w.pfn, p2m: v)) }
                }
            }
            k += chunk.count
        }
        for k in outside.indices where notInDump.contains(outside[k].mfn) { outside[k].notInDump = true }
        outside.sort { $0.index < $1.index }
        s.outside = outside
        if let b = outside.first {
            var lines = ["Bad mfn in p2m_frame_list[\(b.index)]", "mfn \(cHex(b.mfn)), max \(cHex(maxMFN))"]
            if let p = b.m2p {
                lines.append("  m2p[\(cHex(b.mfn))] = \(cHex(p)), max_pfn \(cHex(maxPfn))")
                if let v = b.p2m { lines.append("  p2m[\(cHex(p))] = \(cHex(v))") }
            }
            fail(&s, lines, XenSource.mapP2mLeaves + " (lines 2-4: xg_sr_common_x86_pv.c:dump_bad_pseudophysmap_entry)",
                 "\(outside.count) leaf frame(s) of the P2M are outside the guest's pseudo-physical map")
        }
    }

    // MARK: - dump-core: xc_core_arch_map_p2m_rw

    struct DumpSetup {
        var path: P2MFormat
        var pathReason: String
        var failure: [String]?
        var source: String?
        var detail: String = ""
        var p2mSize: UInt64 = 0
        /// The leaf frames xl dump-core (and xen-mfndump) map, `frames` of them.
        var leaves: [UInt64] = []
    }

    func dumpSetup(nrGpfns: UInt64?, totPages: UInt64) throws(HostError) -> DumpSetup {
        let list = si.p2mCr3 != 0
        var d = DumpSetup(path: list ? .linearList : .tree,
                          pathReason: list ? "p2m_cr3 is \(cHex(si.p2mCr3)) (not 0): xl dump-core reads the linear list"
                                           : "p2m_cr3 is 0: xl dump-core reads the 3-level tree at fll \(cHex(rawFll))")
        func fail(_ lines: [String], _ src: String, _ detail: String = "") -> DumpSetup {
            d.failure = lines
            d.source = src
            d.detail = detail
            return d
        }
        guard let size = nrGpfns else { return fail(["Could not get maximum GPFN!"], XenSource.coreMap) }
        var p2mSize = size
        if p2mSize < totPages {
            let a = String(p2mSize, radix: 16), b = String(totPages &- 1, radix: 16)
            return fail(["p2m_size < nr_pages -1 (\(a) < \(b)"], XenSource.coreMap)
        }
        var leaves: [UInt64]
        var frames: Int
        if list {
            let vaddr = si.p2mVaddr, cr3 = si.p2mCr3
            var fr = UInt32(truncatingIfNeeded: (p2mSize &- 1) / fpp &+ 1)
            var end = vaddr &+ UInt64(fr) &* UInt64(pageSize) &- 1
            if UInt64(fr) > leafCap { return fail([], XenSource.coreList, implausible(UInt64(fr))) }
            let mask: UInt64, levels: Int, root: UInt64
            switch width {
            case .bits64:
                mask = 0x0000_ffff_ffff_ffff
                levels = 4
                root = cr3 >> 12
                func canonical(_ v: UInt64) -> Bool { (Int64(bitPattern: v) >> 47) == (Int64(bitPattern: v) >> 63) }
                if !canonical(vaddr) || !canonical(end) || end < vaddr || (vaddr <= XenVirtualLayout.hypervisorEnd64 && end > XenVirtualLayout.hypervisorStart64) {
                    return fail(["Bad virtual p2m address range \(cHex(vaddr))-\(cHex(end))"], XenSource.coreList)
                }
            case .bits32:
                mask = 0x0000_0000_ffff_ffff
                levels = 3
                root = cr3 & ~mask != 0 ? UInt64.max : CR3.mfn(cr3, width: .bits32)
                if vaddr > mask || end > mask || end < vaddr || (vaddr <= UInt64(UInt32.max) && end > XenVirtualLayout.hypervisorStartPAE) {
                    return fail(["Bad virtual p2m address range \(cHex(vaddr))-\(cHex(end))"], XenSource.coreList)
                }
            }
            var mfns: [UInt64] = [root]
            var off: UInt64 = 0
            var idxStart: UInt32 = 0, idxEnd: UInt32 = 0, savedIdx: UInt32 = 0
            var savedMfn: UInt64 = 0
            for level in stride(from: levels, through: 1, by: -1) {
                let nPages = Int(idxEnd &- idxStart &+ 1)
                guard nPages <= mfns.count else {
                    return fail([], XenSource.coreList, "level-2 trimming makes xl dump-core map more page-table pages than it collected (undefined behaviour)")
                }
                let (ptes, e) = try mapAll(mfns[0..<nPages])
                guard let ptes else {
                    return fail([perror("Failed to map \(nPages) page table pages for p2m list", e)], XenSource.coreList)
                }
                session.noteRead(bytes: nPages * pageSize)
                let shift = UInt64(level * 9 + 3)
                idxStart = UInt32(truncatingIfNeeded: ((vaddr &- off) & mask) >> shift)
                idxEnd = UInt32(truncatingIfNeeded: ((end &- off) & mask) >> shift)
                guard idxEnd >= idxStart, Int(idxEnd) < nPages * 512 else {
                    return fail([], XenSource.coreList, "xl dump-core would index outside the page-table pages it mapped (undefined behaviour)")
                }
                var next: [UInt64] = []
                for idx in idxStart...idxEnd {
                    let mfn = (pte(ptes, Int(idx)) & 0x000f_ffff_ffff_f000) >> 12
                    if mfn == 0 {
                        let va = off &+ (UInt64(idx) << shift)
                        return fail(["Bad mfn 0 during page table walk for vaddr \(cHex(va)) at level \(level) of p2m list"], XenSource.coreList)
                    }
                    next.append(mfn)
                    if level == 2 && mfn != savedMfn {
                        savedMfn = mfn
                        savedIdx = idx &- idxStart
                    }
                }
                if level == 2 {
                    if savedIdx == idxEnd { savedIdx &+= 1 }
                    let trimmed = (UInt64(savedIdx) << 9) &* fpp
                    if trimmed < p2mSize {
                        p2mSize = trimmed
                        fr = UInt32(truncatingIfNeeded: (p2mSize &+ fpp &- 1) / fpp)
                        end = vaddr &+ UInt64(fr) &* UInt64(pageSize) &- 1
                        idxEnd = idxStart &+ savedIdx
                    }
                }
                off = vaddr & ((mask >> shift) << shift)
                mfns = next
            }
            leaves = mfns
            frames = Int(fr)
        } else {
            let fpp2 = fpp &* fpp
            let fllEntries = Int(min((p2mSize &+ fpp2 &- 1) / fpp2, fpp))
            let flEntries = Int(min((p2mSize &+ fpp &- 1) / fpp, fpp2))
            if UInt64(flEntries) > leafCap { return fail([], XenSource.coreTree, implausible(UInt64(flEntries))) }
            let (fllMap, e) = try mapAll([rawFll])
            guard let fllMap else {
                return fail([perror("Couldn't map p2m_frame_list_list (errno \(e))", e)], XenSource.coreTree)
            }
            session.noteRead(bytes: pageSize)
            let fll = words(fllMap, count: fllEntries)
            let (flMap, e2) = try mapAll(fll[0..<fllEntries])
            guard let flMap else { return fail([perror("Couldn't map p2m_frame_list", e2)], XenSource.coreTree) }
            session.noteRead(bytes: fllEntries * pageSize)
            leaves = words(flMap, count: flEntries)
            frames = flEntries
        }
        guard frames <= leaves.count else {
            return fail([], XenSource.coreMap, "xl dump-core would map more leaf frames than it collected (undefined behaviour)")
        }
        guard let e = try firstMapError(Array(leaves.prefix(frames))) else {
            return fail([], XenSource.coreMap, tooManyLeafFrames(frames))
        }
        if e != 0 { return fail([perror("Couldn't map p2m table", e)], XenSource.coreMap) }
        d.p2mSize = p2mSize
        d.leaves = Array(leaves.prefix(frames))
        return d
    }

    // MARK: - Whole prediction

    /// What the scan found that decides the copy's outcome once setup succeeded.
    struct ScanFacts {
        var findings: [Finding]
        var populated: UInt64
        var populatedKnown: Bool
        var totPages: UInt64
        var nrGpfns: UInt64?
        var unstable: Bool
        var scanPath: P2MFormat?

        func finding(_ k: FindingKind) -> Finding? { findings.first { $0.kind == k } }
        func count(_ k: FindingKind) -> UInt64 { finding(k)?.count ?? 0 }
    }

    /// Runs every prediction; returns the section and the leaf frames outside the
    /// pseudo-physical map (for the report's finding).
    func predict(_ facts: ScanFacts) throws(HostError) -> (ToolstackReport, SaveSetup) {
        let save = try saveSetup()
        var out: [ToolstackPrediction] = []

        // Per-entry consequences, shared by save and migrate.
        var wrongPfns: [UInt64] = [], wrongCount: UInt64 = 0
        var droppedPfns: [UInt64] = [], droppedCount: UInt64 = 0
        if let f = facts.finding(.m2pMismatch) {
            // A frame the domain owns is copied; one it does not own is typed XTAB and left out.
            let samples = f.samples.compactMap { s -> (UInt64, UInt64)? in
                guard let p = s.pfn, let m = s.mfn else { return nil }
                return (p, m)
            }
            let probe = samples.isEmpty ? nil : try session.map(samples.map(\.1))
            var unowned: UInt64 = 0
            for (k, (p, _)) in samples.enumerated() {
                if probe?.errors[k] == 0 { wrongPfns.append(p) } else { droppedPfns.append(p); unowned += 1 }
            }
            // Entries beyond the samples: assume owned, as the sampled ones mostly are.
            wrongCount = f.count - unowned
            droppedCount = unowned
        }
        for k in [FindingKind.mfnOutOfRange, .frameUnmappable] {
            guard let f = facts.finding(k) else { continue }
            droppedCount &+= f.count
            droppedPfns += f.samples.compactMap(\.pfn)
        }
        let copyKinds: Set<FindingKind> = [.m2pMismatch, .duplicateMfn, .mfnOutOfRange, .frameUnmappable, .p2mFrameOutsidePhysmap]
        // Critical findings the copy does not explain make an otherwise clean operation
        // `risky`, unless they concern only the format the operation does not read (a
        // bogus fll does not matter to a save that reads the list).
        func unexplained(reading path: P2MFormat) -> [String] {
            facts.findings.filter { f in
                guard f.severity == .critical, !copyKinds.contains(f.kind) else { return false }
                let formats = Set(f.samples.map(\.format))
                return !(formats.count == 1 && formats.first! != nil && formats.first! != path)
            }.map(\.kind.rawValue)
        }

        func copyOutcome(_ op: ToolstackOperation) -> ToolstackPrediction {
            let path = save.path
            if let lines = save.failure {
                return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .fails, messages: lines,
                                           source: save.source,
                                           pfns: save.outside.prefix(sampleLimit).compactMap(\.m2p), pfnCount: UInt64(save.outside.count),
                                           detail: save.detail.isEmpty ? "libxenguest refuses while mapping the P2M, before any page is copied" : save.detail)
            }
            if wrongCount > 0 {
                return ToolstackPrediction(
                    operation: op, path: path, pathReason: save.pathReason, outcome: .copiesWrongMemory, source: XenSource.writeBatch,
                    pfns: Array(wrongPfns.prefix(sampleLimit)), pfnCount: wrongCount,
                    detail: "\(wrongCount) pfn(s) name a frame Xen's M2P gives to another pfn: libxenguest copies each from the frame its entry names, without an error. "
                        + "From reading normalise_pagetable (not yet observed): a page table that still maps such a pfn's own frame fails mfn_in_pseudophysmap; "
                        + "the suspended (not paused) domain makes that EAGAIN, so the page-table page is deferred and never sent"
                        + (droppedCount > 0 ? "; \(droppedCount) more pfn(s) are left out" : ""))
            }
            if droppedCount > 0 {
                return ToolstackPrediction(
                    operation: op, path: path, pathReason: save.pathReason, outcome: .incomplete, source: XenSource.writeBatch,
                    pfns: Array(droppedPfns.prefix(sampleLimit)), pfnCount: droppedCount,
                    detail: "\(droppedCount) pfn(s) name a frame the domain does not own or beyond the host: Xen types them XTAB and libxenguest leaves them out of the image without an error")
            }
            let other = unexplained(reading: path)
            if !other.isEmpty {
                return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .risky,
                                           detail: "libxenguest's own checks pass, but the P2M is inconsistent (\(other.joined(separator: ", "))): the image is what the \(path == .tree ? "tree" : "list") says, not necessarily the guest's memory")
            }
            if op == .migrate {
                if path == .linearList && facts.unstable {
                    return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .abortsIfChanging,
                                               messages: ["p2m generation count changed. Migration aborted."], source: XenSource.generation,
                                               detail: "p2m_generation moved or was odd during the scan: a live migration that sees it move between rounds aborts")
                }
                if path == .tree && facts.unstable {
                    return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .risky,
                                               detail: "the guest is changing its P2M and the tree path has no generation check: a live migration copies whatever the tree says at the end")
                }
                return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .works,
                                           detail: path == .linearList
                                               ? "live rounds compare p2m_generation: a guest that changes its P2M mapping meanwhile (ballooning) aborts with \"p2m generation count changed. Migration aborted.\""
                                               : "the tree path has no generation check")
            }
            return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .works,
                                       detail: "every leaf frame is in the pseudo-physical map and every entry names the guest's own frame")
        }
        out.append(copyOutcome(.save))
        out.append(copyOutcome(.migrate))
        let dumpPath: P2MFormat = si.p2mCr3 != 0 ? .linearList : .tree
        out.append(try dumpPrediction(facts, save: save, wrong: (wrongPfns, wrongCount), dropped: (droppedPfns, droppedCount),
                                      unexplained: unexplained(reading: dumpPath)))
        out.append(treeOnly(facts, save: save))
        return (ToolstackReport(predictions: out), save)
    }

    private func dumpPrediction(_ facts: ScanFacts, save: SaveSetup, wrong: ([UInt64], UInt64), dropped: ([UInt64], UInt64),
                                unexplained: [String]) throws(HostError) -> ToolstackPrediction {
        let d = try dumpSetup(nrGpfns: facts.nrGpfns, totPages: facts.totPages)
        if let lines = d.failure {
            return ToolstackPrediction(operation: .dumpCore, path: d.path, pathReason: d.pathReason, outcome: .fails, messages: lines,
                                       source: d.source, detail: d.detail.isEmpty ? "xl dump-core stops while mapping the P2M" : d.detail)
        }
        // Leaf frames no pfn names are not in the core; a pfn the M2P gives them is
        // either missing (INVALID entry) or dumped from another frame. Only meaningful
        // when dump-core reads the same structure as the save path.
        var missing = dropped.0, missingCount = dropped.1
        var wrongPfns = wrong.0, wrongCount = wrong.1
        if d.path == save.path {
            for o in save.outside {
                guard let p = o.m2p, p != .max else { continue }
                if o.p2m == .max || o.p2m == nil { missing.append(p); missingCount &+= 1 } else if !wrongPfns.contains(p) {
                    wrongPfns.append(p)
                    wrongCount &+= 1
                }
            }
        }
        var extra = ""
        if facts.populatedKnown && facts.populated > facts.totPages {
            let n = facts.populated - facts.totPages
            missingCount &+= n
            extra = "; the core holds at most tot_pages (\(facts.totPages)) frames, so the last \(n) populated pfn(s) are dropped"
        }
        if wrongCount > 0 {
            return ToolstackPrediction(operation: .dumpCore, path: d.path, pathReason: d.pathReason, outcome: .copiesWrongMemory,
                                       source: XenSource.corePages, pfns: Array(wrongPfns.prefix(sampleLimit)), pfnCount: wrongCount,
                                       detail: "\(wrongCount) pfn(s) are dumped from a frame that is not theirs"
                                           + (missingCount > 0 ? "; \(missingCount) pfn(s) are missing" : "") + extra)
        }
        if missingCount > 0 {
            return ToolstackPrediction(operation: .dumpCore, path: d.path, pathReason: d.pathReason, outcome: .incomplete,
                                       source: XenSource.corePages, pfns: Array(missing.prefix(sampleLimit)), pfnCount: missingCount,
                                       detail: "xl dump-core exits 0 but the core lacks \(missingCount) frame(s) of the guest (skipped without a message)" + extra)
        }
        if !unexplained.isEmpty {
            return ToolstackPrediction(operation: .dumpCore, path: d.path, pathReason: d.pathReason, outcome: .risky,
                                       detail: "xl dump-core's checks pass, but the P2M is inconsistent (\(unexplained.joined(separator: ", "))): the core's .xen_p2m is what the guest published")
        }
        return ToolstackPrediction(operation: .dumpCore, path: d.path, pathReason: d.pathReason, outcome: .works,
                                   detail: "sized from nr_gpfns (\(d.p2mSize) pfns after trimming); runs without pausing the guest and without a generation check")
    }

    /// Before migration v2 (Xen 4.6) the save path knew only the tree.
    private func treeOnly(_ facts: ScanFacts, save: SaveSetup) -> ToolstackPrediction {
        let reason = "the pre-4.6 save path reads only the 3-level tree"
        func line(_ o: ToolstackOutcome, _ d: String) -> ToolstackPrediction {
            ToolstackPrediction(operation: .treeOnlyToolstack, path: .tree, pathReason: reason, outcome: o, detail: d)
        }
        if si.frameListList == .max { return line(.fails, "fll is ~0 (linear list only): it cannot find the P2M (\"Couldn't map p2m_frame_list_list\")") }
        if si.frameListList == 0 { return line(.fails, "fll is 0: no tree published") }
        if facts.count(.treeCapacityExceeded) > 0 { return line(.fails, "max_pfn is beyond what the 3-level tree describes") }
        let treeProblems = facts.findings.filter { $0.severity == .critical && $0.samples.contains { $0.format == .tree } }
        if !treeProblems.isEmpty { return line(.fails, "the tree is damaged (\(treeProblems.map(\.kind.rawValue).joined(separator: ", ")))") }
        if !save.outside.isEmpty { return line(.fails, "P2M leaf frames outside the pseudo-physical map: the pre-4.6 save checked its frame list for that too") }
        if facts.findings.contains(where: { $0.severity == .critical }) { return line(.risky, "the tree is readable but the P2M is inconsistent") }
        return line(.works, "fll and the tree are consistent")
    }
}

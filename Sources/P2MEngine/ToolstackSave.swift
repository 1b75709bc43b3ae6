#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Save and migrate: what map_p2m() and map_p2m_leaves() make of the guest (see
// ToolstackModel.swift for the model as a whole).

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

extension ToolstackModel {
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
}

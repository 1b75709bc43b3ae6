#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// xl dump-core: what xc_core_arch_map_p2m_rw() makes of the guest (see ToolstackModel.swift
// for the model as a whole).

extension ToolstackModel {
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
}

import P2MEngine

// Guest construction and mutation, following Linux's arch/x86/xen/p2m.c:
//  - one shared all-INVALID "missing" leaf, and an "identity" leaf (also all INVALID:
//    Linux recognises it by address, not content);
//  - a shared "missing" mid page (every entry -> missing leaf), every fll slot starts
//    pointing at it, real mid pages are allocated when a leaf becomes real;
//  - the linear list in the kernel's page tables, with one shared L1 page
//    ("p2m_missing_pte") mapping the missing leaf for every wholly missing 2 MiB range;
//  - p2m_generation bumped before and after every change of the list's mapping.
// All functions here run with the host lock held.

let tableFlags: UInt64 = 0x63 // present | rw | accessed | dirty (_KERNPG_TABLE)
let nx: UInt64 = 1 << 63
let leafFlags: UInt64 = 0x63 | nx // PAGE_KERNEL
let sharedLeafFlags: UInt64 = 0x61 | nx // PAGE_KERNEL_RO
let pse: UInt64 = 0x80

extension SimulatedHost {
    /// Creates a domain and lays out its P2M. HVM/PVH domains get no P2M.
    public func createGuest(_ spec: GuestSpec) throws(SimError) {
        lock.lock(); defer { lock.unlock() }
        guard domains[spec.domid] == nil else { throw SimError.domainExists(spec.domid) }
        guard spec.domid < 0x7FF0 else { throw SimError.invalidSpec("domid \(spec.domid) is reserved") }
        let shinfo = try allocFrame(for: spec.domid)
        let d = SimDomain(spec: spec, sharedInfoFrame: shinfo)
        domains[spec.domid] = d
        do {
            if spec.type == .pv { try build(d, spec) }
            d.building = false
        } catch {
            destroyLocked(spec.domid)
            throw error
        }
    }

    private func build(_ d: SimDomain, _ spec: GuestSpec) throws(SimError) {
        for r in spec.populated + spec.identity where r.upperBound > spec.maxPfn {
            throw SimError.invalidSpec("range \(r) of domain \(spec.domid) beyond max_pfn \(spec.maxPfn)")
        }
        if spec.width == .bits64 && !(spec.pagingLevels == 4 || spec.pagingLevels == 5) {
            throw SimError.invalidSpec("64-bit guests use 4 or 5 page-table levels, not \(spec.pagingLevels)")
        }
        if let v = spec.p2mVaddr, v & ((1 << 21) - 1) != 0 {
            // Linux's P2M area is PMD aligned; the builder maps it in 2 MiB ranges.
            throw SimError.invalidSpec("p2m_vaddr \(String(v, radix: 16)) is not 2 MiB aligned")
        }
        let fpp = UInt64(d.fpp)
        d.leafCount = Int((spec.maxPfn + fpp - 1) / fpp)
        d.hasTree = spec.formats != .listOnly
        d.hasList = spec.formats != .treeOnly
        d.ptLevels = spec.width == .bits64 ? spec.pagingLevels : 3

        // Linux allocates its P2M pages from its own RAM, so they are populated pfns
        // too: reserve the top of the guest's RAM for them (the exact need is only
        // known while building; leftovers become ordinary RAM at the end).
        d.reserve = reservePfns(spec, d)
        let reserved = Set(d.reserve)
        d.missingLeaf = try allocStructure(d)
        fillInvalid(d.missingLeaf)
        d.identityLeaf = try allocStructure(d)
        fillInvalid(d.identityLeaf)
        d.leafFrames = [UInt64](repeating: d.missingLeaf, count: d.leafCount)

        if d.hasTree {
            d.midMissing = try allocStructure(d)
            for i in 0..<d.fpp { store(d.midMissing, i, d.missingLeaf, bytes: d.entryBytes) }
            d.fll = try allocStructure(d)
            for i in 0..<d.fpp { store(d.fll, i, d.midMissing, bytes: d.entryBytes) }
            d.mids = [UInt64](repeating: d.midMissing, count: d.fpp)
        }
        if d.hasList {
            d.missingPte = try allocStructure(d)
            for i in 0..<512 { store(d.missingPte, i, (d.missingLeaf << pageShift) | sharedLeafFlags, bytes: 8) }
            d.ptRoot = try allocStructure(d)
            d.vaddr = spec.p2mVaddr ?? defaultVaddr(d)
            // Map every 2 MiB range of the list (Linux rounds the area up) to the shared L1.
            let chunks = (d.leafCount + 511) / 512
            for c in 0..<chunks {
                try setL2(d, leaf: c * 512, value: (d.missingPte << pageShift) | tableFlags)
            }
        }

        for r in spec.identity { try setIdentity(d, r) }
        for r in spec.populated { try populate(d, r, skipping: reserved) }
        // Write the entries of the pfns whose frames now hold P2M pages (their leaves
        // may need pages of their own, hence the loop), then hand back the rest.
        while let (pfn, mfn) = d.pending.popLast() {
            let k = Int(pfn / fpp)
            let leaf = try realLeaf(d, k)
            store(leaf, Int(pfn % fpp), mfn, bytes: d.entryBytes)
        }
        let leftover = d.reserve
        d.reserve = []
        for pfn in leftover { try populate(d, pfn..<(pfn + 1)) }
        // Some free kernel pages for P2M growth after boot (ballooning up).
        d.kernelPool = leftover.suffix(64).map { ($0, entry(d, $0)) }

        d.shared = ArchSharedInfo(
            maxPfn: spec.maxPfn,
            frameListList: d.hasTree ? d.fll : (d.hasList ? UInt64.max : 0),
            p2mCr3: d.hasList ? CR3.fromMFN(d.ptRoot, width: d.width) : 0,
            p2mVaddr: d.hasList ? d.vaddr : 0,
            p2mGeneration: 0)
    }

    func defaultVaddr(_ d: SimDomain) -> UInt64 {
        switch d.width {
        case .bits64: return d.ptLevels == 5 ? 0xffa0_0000_0000_0000 : 0xffff_c900_0000_0000
        case .bits32: return 0xc800_0000
        }
    }

    func fillInvalid(_ mfn: UInt64) {
        page(mfn).initializeMemory(as: UInt8.self, repeating: 0xff, count: pageSize)
    }

    // MARK: Page tables of the linear list

    func vpn(_ d: SimDomain, leaf: Int) -> UInt64 {
        let vaBits: UInt64 = d.width == .bits64 ? UInt64(12 + 9 * d.ptLevels) : 32
        return ((d.vaddr & ((1 << vaBits) - 1)) >> pageShift) &+ UInt64(leaf)
    }

    func ptIndex(_ d: SimDomain, _ vpn: UInt64, level: Int) -> Int {
        let bits: UInt64 = (d.width == .bits32 && level == 3) ? 2 : 9
        return Int((vpn >> UInt64(9 * (level - 1))) & ((1 << bits) - 1))
    }

    /// Walks from the root to the L2 table for `leaf`, creating tables on the way.
    func l2Table(_ d: SimDomain, leaf: Int) throws(SimError) -> (UInt64, Int) {
        let v = vpn(d, leaf: leaf)
        var table = d.ptRoot
        var level = d.ptLevels
        while level > 2 {
            let idx = ptIndex(d, v, level: level)
            let e = load(table, idx, bytes: 8)
            if e & 1 == 0 {
                let t = try allocStructure(d)
                _ = page(t)
                store(table, idx, (t << pageShift) | tableFlags, bytes: 8)
                table = t
            } else {
                table = (e & 0x000f_ffff_ffff_f000) >> pageShift
            }
            level -= 1
        }
        return (table, ptIndex(d, v, level: 2))
    }

    func setL2(_ d: SimDomain, leaf: Int, value: UInt64) throws(SimError) {
        let (t, i) = try l2Table(d, leaf: leaf)
        store(t, i, value, bytes: 8)
    }

    /// Returns the private L1 page for `leaf`, replacing the shared missing L1 first
    /// (Linux's alloc_p2m_pmd).
    func l1Table(_ d: SimDomain, leaf: Int) throws(SimError) -> (UInt64, Int) {
        let (t, i) = try l2Table(d, leaf: leaf)
        let e = load(t, i, bytes: 8)
        var l1 = (e & 0x000f_ffff_ffff_f000) >> pageShift
        if e & 1 == 0 || l1 == d.missingPte {
            let fresh = try allocStructure(d)
            page(fresh).copyMemory(from: page(d.missingPte), byteCount: pageSize)
            mappingChange(d) { store(t, i, (fresh << pageShift) | tableFlags, bytes: 8) }
            l1 = fresh
        }
        return (l1, ptIndex(d, vpn(d, leaf: leaf), level: 1))
    }

    func mappingChange(_ d: SimDomain, _ body: () -> Void) {
        if !d.building { d.shared.p2mGeneration &+= 1 }
        body()
        if !d.building { d.shared.p2mGeneration &+= 1 }
    }

    // MARK: Leaves

    /// Points leaf `k` at `frame` in both formats.
    func setLeafFrame(_ d: SimDomain, _ k: Int, _ frame: UInt64, shared: Bool) throws(SimError) {
        if d.hasList {
            let (l1, i) = try l1Table(d, leaf: k)
            mappingChange(d) { store(l1, i, (frame << pageShift) | (shared ? sharedLeafFlags : leafFlags), bytes: 8) }
        }
        if d.hasTree && k < d.fpp * d.fpp {
            let top = k / d.fpp, mid = k % d.fpp
            if d.mids[top] == d.midMissing {
                let m = try allocStructure(d)
                for i in 0..<d.fpp { store(m, i, d.missingLeaf, bytes: d.entryBytes) }
                d.mids[top] = m
                store(d.fll, top, m, bytes: d.entryBytes)
            }
            store(d.mids[top], mid, frame, bytes: d.entryBytes)
        }
        d.leafFrames[k] = frame
    }

    /// Gives leaf `k` a private frame (Linux's alloc_p2m), keeping its content.
    @discardableResult
    func realLeaf(_ d: SimDomain, _ k: Int) throws(SimError) -> UInt64 {
        let cur = d.leafFrames[k]
        if cur != d.missingLeaf && cur != d.identityLeaf { return cur }
        let fresh = try allocStructure(d)
        if cur == d.identityLeaf {
            let first = UInt64(k * d.fpp)
            for i in 0..<d.fpp { store(fresh, i, P2MEntry.identity(first + UInt64(i), d.width), bytes: d.entryBytes) }
        } else {
            fillInvalid(fresh)
        }
        try setLeafFrame(d, k, fresh, shared: false)
        return fresh
    }

    func setIdentity(_ d: SimDomain, _ r: Range<UInt64>) throws(SimError) {
        let fpp = UInt64(d.fpp)
        var pfn = r.lowerBound
        while pfn < r.upperBound {
            let k = Int(pfn / fpp)
            let leafStart = UInt64(k) * fpp
            if pfn == leafStart && r.upperBound >= leafStart + fpp && d.leafFrames[k] == d.missingLeaf {
                try setLeafFrame(d, k, d.identityLeaf, shared: true)
                pfn += fpp
                continue
            }
            let leaf = try realLeaf(d, k)
            store(leaf, Int(pfn - leafStart), P2MEntry.identity(pfn, d.width), bytes: d.entryBytes)
            pfn += 1
        }
    }

    /// The top pfns of the populated ranges, enough for every P2M page the build can
    /// need (leaves, mid pages, page tables, shared pages), at most half the RAM.
    func reservePfns(_ spec: GuestSpec, _ d: SimDomain) -> [UInt64] {
        let fpp = UInt64(d.fpp)
        let ranges = spec.populated + spec.identity
        let leaves = ranges.reduce(UInt64(0)) { $0 + UInt64($1.count) / fpp + 2 }
        let mids = d.hasTree ? min(fpp, leaves) : 0
        let tables = d.hasList ? (leaves / 512 + UInt64(ranges.count) + 2) * UInt64(d.ptLevels + 1) : 0
        let need = 8 + leaves + mids + tables
        let ram = spec.populated.reduce(UInt64(0)) { $0 + UInt64($1.count) }
        var want = min(need, ram / 2)
        var out: [UInt64] = []
        for r in spec.populated.sorted(by: { $0.lowerBound > $1.lowerBound }) where want > 0 {
            var pfn = r.upperBound
            while pfn > r.lowerBound && want > 0 {
                pfn -= 1
                out.append(pfn)
                want -= 1
            }
        }
        // popLast hands out the lowest reserved pfn first.
        return out
    }

    /// A frame for a P2M page. While building it comes from the reserved top of the
    /// guest's RAM; afterwards from the kernel's free pages, as Linux's alloc_p2m does.
    /// Only when both are exhausted is it a frame outside the P2M (tot_pages unchanged).
    func allocStructure(_ d: SimDomain) throws(SimError) -> UInt64 {
        if d.building, let pfn = d.reserve.popLast() {
            let mfn = try allocFrame(for: d.domid)
            m2p[Int(mfn)] = pfn
            d.pending.append((pfn, mfn))
            d.populatedCount += 1
            return mfn
        }
        if !d.building, let (_, mfn) = d.kernelPool.popLast() {
            return mfn
        }
        d.structureFramesOutsideP2M += 1
        return try allocFrame(for: d.domid)
    }

    func populate(_ d: SimDomain, _ r: Range<UInt64>, skipping reserved: Set<UInt64> = []) throws(SimError) {
        let fpp = UInt64(d.fpp)
        var pfn = r.lowerBound
        while pfn < r.upperBound {
            let k = Int(pfn / fpp)
            let leaf = try realLeaf(d, k)
            let end = min(r.upperBound, UInt64(k + 1) * fpp)
            // One page lookup per leaf, not per entry: building a 1 TiB guest touches
            // hundreds of millions of entries.
            let p = page(leaf)
            while pfn < end {
                let idx = Int(pfn % fpp)
                let unpopulated = d.entryBytes == 4
                    ? p.load(fromByteOffset: idx * 4, as: UInt32.self) == .max
                    : p.load(fromByteOffset: idx * 8, as: UInt64.self) == .max
                if unpopulated && !reserved.contains(pfn) {
                    let mfn = try allocFrame(for: d.domid)
                    if d.width == .bits32 && mfn >= (1 << 30) { throw SimError.invalidSpec("32-bit guest frame above 4 TiB") }
                    m2p[Int(mfn)] = pfn
                    if d.entryBytes == 4 {
                        p.storeBytes(of: UInt32(mfn), toByteOffset: idx * 4, as: UInt32.self)
                    } else {
                        p.storeBytes(of: mfn, toByteOffset: idx * 8, as: UInt64.self)
                    }
                    d.populatedCount += 1
                }
                pfn += 1
            }
        }
    }

    /// The guest's current entry for `pfn` (INVALID widened to UInt64.max).
    func entry(_ d: SimDomain, _ pfn: UInt64) -> UInt64 {
        let k = Int(pfn / UInt64(d.fpp))
        guard k < d.leafFrames.count else { return .max }
        return load(d.leafFrames[k], Int(pfn % UInt64(d.fpp)), bytes: d.entryBytes)
    }

    // MARK: Ballooning

    /// Balloons the guest to `pages` populated pages: down releases the highest
    /// populated pfns to Xen, up repopulates the lowest unpopulated pfns below max_pfn.
    public func balloon(_ domid: DomID, toPages pages: UInt64) throws(SimError) {
        lock.lock(); defer { lock.unlock() }
        guard let d = domains[domid], d.type == .pv else { throw SimError.noSuchDomain(domid) }
        guard pages <= d.shared.maxPfn else { throw SimError.invalidSpec("balloon target \(pages) beyond max_pfn \(d.shared.maxPfn)") }
        if pages < d.populatedCount {
            var pfn = d.shared.maxPfn
            while d.populatedCount > pages && pfn > 0 {
                pfn -= 1
                let e = entry(d, pfn)
                if e == .max || e & P2MEntry.identityBit(d.width) != 0 || e & P2MEntry.foreignBit(d.width) != 0 { continue }
                // The balloon driver cannot take pages the kernel uses for its P2M.
                if contents[e] != nil || d.kernelPool.contains(where: { $0.pfn == pfn }) { continue }
                let k = Int(pfn / UInt64(d.fpp))
                store(d.leafFrames[k], Int(pfn % UInt64(d.fpp)), .max, bytes: d.entryBytes)
                if e < frameCount { freeFrame(e) }
                d.populatedCount -= 1
            }
        } else {
            var pfn: UInt64 = 0
            while d.populatedCount < pages && pfn < d.shared.maxPfn {
                if entry(d, pfn) == .max {
                    try populate(d, pfn..<(pfn + 1))
                    // Fresh RAM feeds the kernel's allocator, which later P2M pages use.
                    if d.kernelPool.count < 64 { d.kernelPool.append((pfn, entry(d, pfn))) }
                }
                pfn += 1
            }
        }
    }

    /// Populated pages of a domain (its tot_pages without injected extras).
    public func populatedPages(_ domid: DomID) -> UInt64? {
        lock.lock(); defer { lock.unlock() }
        return domains[domid]?.populatedCount
    }

    /// The guest's P2M as the guest sees it, for pfns in `range` (tests compare walks to it).
    public func guestEntries(_ domid: DomID, _ range: Range<UInt64>) -> [UInt64] {
        lock.lock(); defer { lock.unlock() }
        guard let d = domains[domid] else { return [] }
        return range.map { entry(d, $0) }
    }

    /// Marks a domain dying or shut down (the daemon skips such guests).
    public func setState(_ domid: DomID, dying: Bool? = nil, shutdown: Bool? = nil) {
        lock.lock(); defer { lock.unlock() }
        if let v = dying { domains[domid]?.dying = v }
        if let v = shutdown { domains[domid]?.shutdown = v }
    }
}

extension SimulatedHost {
    /// The frames holding the guest's P2M leaves, in pfn order (benchmarks map them to
    /// compare the engine with a reference loop on identical buffers).
    public func leafFrames(_ domid: DomID) -> [UInt64] {
        lock.lock(); defer { lock.unlock() }
        return domains[domid]?.leafFrames ?? []
    }
}

// The scanner's per-entry work: every leaf of the primary walk checked entry by entry
// (or reused from its memo when unchanged), probes of data frames, and the tree/list
// cross-check. Scanner.swift drives a scan; this file is the hot loop.

extension P2MScanner {
    fileprivate enum SharedLeaf {
        case sharedInvalid
        case misused
        /// A shared frame that refused to map: later slots naming it are not retried,
        /// so a hostile layout cannot turn every slot into its own map call.
        case unmappable(Int32)
    }

    func checkLeaves(_ w: WalkResult, effective: UInt64, width: GuestWidth, maxMFN: UInt64, m2p: M2PMapping, a: Attempt) throws(HostError) {
        let fpp = width.fpp
        let nLeaves = Int((effective &+ UInt64(fpp) &- 1) / UInt64(fpp))
        let bitmap = bitmaps.take(maxMFN: maxMFN)
        var checker = LeafChecker(width: width, maxMFN: maxMFN, m2p: m2p.entries, probe: options.probeDataFrames, bitmap: bitmap)
        defer {
            checker.clear()
            bitmaps.give(bitmap)
        }

        // Frames named by more than one leaf slot: legitimate only for all-INVALID pages.
        // Found with the checker's MFN bitmap (cleared again before the entry checks),
        // so this costs no memory beyond the bitmap the scan needs anyway.
        let shared = checker.framesSeenTwice(w.leaves[0..<nLeaves], ignoring: unreadableLeaf)
        var sharedState: [UInt64: SharedLeaf] = [:]
        // Hashing every leaf MFN against an empty set showed up in fleet profiles.
        let anyShared = !shared.isEmpty
        func isShared(_ m: UInt64) -> Bool { anyShared && shared.contains(m) }

        let cells = max(1, min(options.mapCells, nLeaves))
        let leavesPerCell = max(1, (nLeaves + cells - 1) / cells)
        var masks = [UInt8](repeating: 0, count: (nLeaves + leavesPerCell - 1) / leavesPerCell)

        func entriesIn(_ leaf: Int) -> Int {
            let first = UInt64(leaf) &* UInt64(fpp)
            return Int(min(UInt64(fpp), effective &- first))
        }
        let pass = a.pass
        pass?.begin(leafCount: nLeaves)
        checker.ownerLeafBound = UInt64(nLeaves)

        /// A leaf frame that refused to map: its entries are unknown.
        func leafUnmappable(_ leaf: Int, _ m: UInt64, errno err: Int32) {
            a.findings.add(.structureUnmappable, FindingSample(pfn: UInt64(leaf) &* UInt64(fpp), mfn: m, level: 0, index: UInt64(leaf), format: a.primary,
                                                              note: "leaf, errno \(err)"))
            checker.counts.faulty &+= UInt64(entriesIn(leaf))
            a.populatedKnown = false
            masks[leaf / leavesPerCell] |= PfnMap.Bit.unreadable
            pass?.forget(leaf)
        }

        var i = 0
        while i < nLeaves {
            // Gather up to one batch of leaves that need their page read.
            var batch: [Int] = []
            var mfns: [UInt64] = []
            while i < nLeaves && mfns.count < a.session.batchFrames {
                let m = w.leaves[i]
                let n = entriesIn(i)
                if pass != nil && (m == unreadableLeaf || isShared(m)) { pass!.forget(i) }
                if m == unreadableLeaf {
                    checker.counts.faulty &+= UInt64(n)
                    a.populatedKnown = false
                    masks[i / leavesPerCell] |= PfnMap.Bit.unreadable
                } else if anyShared, let s = sharedState[m] {
                    switch s {
                    case .sharedInvalid:
                        checker.counts.invalid &+= UInt64(n)
                        masks[i / leavesPerCell] |= PfnMap.Bit.invalid
                    case .unmappable(let err):
                        leafUnmappable(i, m, errno: err)
                    case .misused:
                        // The pfns this slot should describe are unknown.
                        a.populatedKnown = false
                        a.findings.add(.sharedFrameMisuse, FindingSample(pfn: UInt64(i) &* UInt64(fpp), mfn: m, level: 0, index: UInt64(i), format: a.primary))
                        checker.counts.faulty &+= UInt64(n)
                        masks[i / leavesPerCell] |= PfnMap.Bit.faulty
                    }
                } else if isShared(m) && mfns.contains(m) {
                    // Second use inside this batch: decide after the first is read.
                    break
                } else {
                    batch.append(i)
                    mfns.append(m)
                }
                i += 1
            }
            if mfns.isEmpty { continue }
            let mapping = try a.session.map(mfns)
            for (slot, leaf) in batch.enumerated() {
                let m = mfns[slot]
                let n = entriesIn(leaf)
                let cell = leaf / leavesPerCell
                guard let page = mapping.page(slot) else {
                    if isShared(m) { sharedState[m] = .unmappable(mapping.errors[slot]) }
                    leafUnmappable(leaf, m, errno: mapping.errors[slot])
                    continue
                }
                a.session.noteRead(bytes: pageSize)
                if isShared(m) {
                    if checker.allInvalid(page) {
                        sharedState[m] = .sharedInvalid
                        checker.counts.invalid &+= UInt64(n)
                        masks[cell] |= PfnMap.Bit.invalid
                        continue
                    }
                    sharedState[m] = .misused
                }
                guard let pass, !isShared(m) else {
                    masks[cell] |= checker.check(page: page, firstPfn: UInt64(leaf) &* UInt64(fpp), count: n, findings: &a.findings)
                    continue
                }
                let fp = pass.fingerprint.of(page, bytes: n &* width.bytes)
                if checker.ownerLeaves.isEmpty || !checker.ownerLeaves.contains(UInt64(leaf)),
                   let r = pass.reusable(leaf, mfn: m, entries: n, fp: fp) {
                    // Clean: every entry in a valid form passed, so populated == valid.
                    checker.counts.valid &+= UInt64(r.valid)
                    checker.counts.invalid &+= UInt64(r.invalid)
                    checker.counts.identity &+= UInt64(r.identity)
                    checker.counts.foreign &+= UInt64(r.foreign)
                    checker.populated &+= UInt64(r.valid)
                    masks[cell] |= r.mask
                    pass.reused &+= 1
                    continue
                }
                let before = checker.counts, seen = a.findings.total
                let mask = checker.check(page: page, firstPfn: UInt64(leaf) &* UInt64(fpp), count: n, findings: &a.findings)
                masks[cell] |= mask
                var delta = EntryCounts()
                delta.valid = checker.counts.valid &- before.valid
                delta.invalid = checker.counts.invalid &- before.invalid
                delta.identity = checker.counts.identity &- before.identity
                delta.foreign = checker.counts.foreign &- before.foreign
                pass.remember(leaf, mfn: m, entries: n, fp: fp, counts: delta, mask: mask, clean: a.findings.total == seen)
            }
            if checker.pendingProbe.count >= 4 * a.session.batchFrames { try flushProbe(&checker, a) }
        }
        try flushProbe(&checker, a)
        // An owner's leaf passed over before its impostor was met is checked next scan,
        // and every scan while the impostor's leaf keeps failing: the duplicate stays seen.
        if let pass {
            if checker.ownerLeavesOverflowed {
                pass.forgetAll()
            } else {
                for l in checker.ownerLeaves { pass.forget(Int(l)) }
            }
        }

        a.counts = checker.counts
        a.populated = checker.populated
        a.pfnMap = PfnMap(pfnsPerCell: UInt64(leavesPerCell) &* UInt64(fpp), cells: PfnMap.encode(masks))
    }

    func flushProbe(_ checker: inout LeafChecker, _ a: Attempt) throws(HostError) {
        var start = 0
        let pending = checker.pendingProbe
        while start < pending.count {
            let end = min(pending.count, start + a.session.batchFrames)
            let mfns = pending[start..<end].map(\.1)
            let mapping = try a.session.map(mfns)
            for (k, err) in mapping.errors.enumerated() where err != 0 {
                let (pfn, mfn) = pending[start + k]
                a.findings.add(.frameUnmappable, FindingSample(pfn: pfn, mfn: mfn, note: "errno \(err)"))
                checker.counts.valid &-= 1
                checker.counts.faulty &+= 1
            }
            start = end
        }
        checker.pendingProbe.removeAll(keepingCapacity: true)
    }

    /// Where tree and list name different leaf frames, compare their entries one by one.
    func crossCheck(tree: [UInt64], list: [UInt64], effective: UInt64, width: GuestWidth, a: Attempt) throws(HostError) {
        let fpp = width.fpp
        let n = min(tree.count, list.count, Int((effective &+ UInt64(fpp) &- 1) / UInt64(fpp)))
        var pairs: [(Int, UInt64, UInt64)] = []
        func flush() throws(HostError) {
            guard !pairs.isEmpty else { return }
            var mfns: [UInt64] = []
            mfns.reserveCapacity(pairs.count * 2)
            for p in pairs { mfns.append(p.1); mfns.append(p.2) }
            let mapping = try a.session.map(mfns)
            for (k, p) in pairs.enumerated() {
                guard let tp = mapping.page(2 * k), let lp = mapping.page(2 * k + 1) else { continue }
                a.session.noteRead(bytes: 2 * pageSize)
                let first = UInt64(p.0) &* UInt64(fpp)
                let count = Int(min(UInt64(fpp), effective &- first))
                for e in 0..<count {
                    let tv = readWord(tp, e, width), lv = readWord(lp, e, width)
                    if tv != lv {
                        a.findings.add(.treeListMismatch, FindingSample(pfn: first &+ UInt64(e), mfn: tv, expected: lv, format: .tree))
                    }
                }
            }
            pairs.removeAll(keepingCapacity: true)
        }
        for i in 0..<n where tree[i] != list[i] && tree[i] != unreadableLeaf && list[i] != unreadableLeaf {
            pairs.append((i, tree[i], list[i]))
            if pairs.count * 2 >= a.session.batchFrames { try flush() }
        }
        try flush()
    }

    @inline(__always)
    func readWord(_ p: UnsafeRawPointer, _ i: Int, _ w: GuestWidth) -> UInt64 {
        switch w {
        case .bits64: return p.load(fromByteOffset: i &* 8, as: UInt64.self)
        case .bits32:
            let v = p.load(fromByteOffset: i &* 4, as: UInt32.self)
            return v == .max ? .max : UInt64(v)
        }
    }
}

/// Per-entry checks over mapped leaf pages: classification, M2P round trip, MFN range
/// and duplicate detection with one bit per host frame. This is the hot loop: it reads
/// through raw pointers, allocates nothing per entry and is specialised per width.
struct LeafChecker {
    let width: GuestWidth
    let maxMFN: UInt64
    let m2p: UnsafeBufferPointer<UInt64>
    /// One bit per MFN in [0, maxMFN]: set once a pfn has claimed the frame. Zero on
    /// entry, and zero again after `clear()`.
    let mfns: MFNBitmap
    let bitmap: UnsafeMutablePointer<UInt64>
    let bitmapWords: Int
    let dirty: UnsafeMutablePointer<UInt8>
    let probe: Bool

    var counts = EntryCounts()
    /// Entries naming a frame of their own (valid form), whether or not a check failed.
    var populated: UInt64 = 0
    /// (pfn, mfn) of entries to probe for mappability, flushed in batches.
    var pendingProbe: [(UInt64, UInt64)] = []
    /// Leaves holding the pfn the M2P names for a frame that failed its round trip: the
    /// owner's side of a possible duplicate, which an incremental scan must check in the
    /// same scan as the impostor's (see LeafMemo.swift). Only failed entries add to it,
    /// and at most `ownerLeafLimit` leaves; past that, `ownerLeavesOverflowed`.
    var ownerLeaves = Set<UInt64>()
    var ownerLeavesOverflowed = false
    /// Leaves of this walk: an owner beyond them (INVALID, another domain's pfn) is no
    /// leaf to check and must not use up the limit.
    var ownerLeafBound: UInt64 = .max
    static let ownerLeafLimit = 4096

    init(width: GuestWidth, maxMFN: UInt64, m2p: UnsafeBufferPointer<UInt64>, probe: Bool, bitmap mfns: MFNBitmap) {
        precondition(mfns.covers(maxMFN: maxMFN), "MFN bitmap sized for another host")
        self.width = width
        self.maxMFN = maxMFN
        self.m2p = m2p
        self.probe = probe
        self.mfns = mfns
        bitmap = mfns.words
        bitmapWords = mfns.wordCount
        dirty = mfns.dirty
    }

    @inline(never)
    private mutating func noteOwner(_ pfn: UInt64) {
        let leaf = pfn / UInt64(width.fpp)
        guard !ownerLeavesOverflowed, leaf < ownerLeafBound else { return }
        if ownerLeaves.count >= Self.ownerLeafLimit { ownerLeavesOverflowed = true; return }
        ownerLeaves.insert(leaf)
    }

    /// Leaves the bitmap all zero, ready for the next scan.
    func clear() { mfns.clearTouched() }

    /// MFNs that occur more than once in `frames`, using the (still empty) bitmap and
    /// leaving it empty again. Frames beyond the bitmap are skipped: the walker has
    /// already rejected them.
    func framesSeenTwice(_ frames: ArraySlice<UInt64>, ignoring sentinel: UInt64) -> Set<UInt64> {
        var twice = Set<UInt64>()
        for m in frames where m != sentinel && Int(m >> 6) < bitmapWords {
            let bit = UInt64(1) << (m & 63)
            if bitmap[Int(m >> 6)] & bit != 0 { twice.insert(m) } else { bitmap[Int(m >> 6)] |= bit }
        }
        for m in frames where m != sentinel && Int(m >> 6) < bitmapWords { bitmap[Int(m >> 6)] = 0 }
        return twice
    }

    /// Checks entries [0, count) of one leaf page whose first pfn is `firstPfn`.
    /// Returns the PfnMap class mask seen in this leaf.
    mutating func check(page: UnsafeRawPointer, firstPfn: UInt64, count: Int, findings: inout FindingCollector) -> UInt8 {
        switch width {
        case .bits64: return check(page.assumingMemoryBound(to: UInt64.self), firstPfn, count, &findings)
        case .bits32: return check(page.assumingMemoryBound(to: UInt32.self), firstPfn, count, &findings)
        }
    }

    @inline(__always)
    private mutating func check<W: FixedWidthInteger & UnsignedInteger>(
        _ entries: UnsafePointer<W>, _ firstPfn: UInt64, _ count: Int, _ findings: inout FindingCollector
    ) -> UInt8 {
        let allOnes = UInt64(W.max)
        let foreignBit = UInt64(1) << UInt64(W.bitWidth - 1)
        let identityBit = UInt64(1) << UInt64(W.bitWidth - 2)
        let m2pCount = UInt64(m2p.count)
        let limit = min(maxMFN, m2pCount &- 1)
        let m2pBase = m2p.baseAddress
        if !probe, let mask = cleanLeaf(entries, firstPfn, count) { return mask }
        var mask: UInt8 = 0
        var valid: UInt64 = 0, invalid: UInt64 = 0, identity: UInt64 = 0, foreign: UInt64 = 0, faulty: UInt64 = 0

        for i in 0..<count {
            let e = UInt64(entries[i])
            let pfn = firstPfn &+ UInt64(i)
            if e == allOnes {
                invalid &+= 1
                continue
            }
            if e & foreignBit != 0 {
                foreign &+= 1
                continue
            }
            if e & identityBit != 0 {
                if e & ~identityBit == pfn {
                    identity &+= 1
                } else {
                    faulty &+= 1
                    findings.add(.identityMismatch, FindingSample(pfn: pfn, expected: pfn, found: e & ~identityBit))
                }
                continue
            }
            populated &+= 1
            if m2pCount == 0 || e > limit {
                faulty &+= 1
                findings.add(.mfnOutOfRange, FindingSample(pfn: pfn, mfn: e, expected: maxMFN))
                continue
            }
            // A frame named twice cannot round-trip for both pfns. The M2P says which pfn
            // owns it: the other one is blamed (m2p_mismatch, with the duplicate noted on
            // it when it comes second), whatever the order of the two in the P2M.
            let word = Int(e >> 6)
            let bit = UInt64(1) << (e & 63)
            let claimed = bitmap[word] & bit != 0
            bitmap[word] |= bit
            dirty[word >> MFNBitmap.chunkShift] = 1
            let back = m2pBase.unsafelyUnwrapped[Int(e)]
            if back != pfn {
                faulty &+= 1
                findings.add(.m2pMismatch, FindingSample(pfn: pfn, mfn: e, expected: pfn, found: back))
                noteOwner(back)
                if claimed { findings.add(.duplicateMfn, FindingSample(pfn: pfn, mfn: e, found: back, note: "frame also named by a lower pfn")) }
                continue
            }
            if claimed {
                // This pfn owns the frame; a lower pfn that failed its M2P check named it too.
                findings.add(.duplicateMfn, FindingSample(mfn: e, found: pfn, note: "owned by pfn \(pfn) per the M2P; a lower pfn (see m2p_mismatch) names it too"))
            }
            valid &+= 1
            if probe { pendingProbe.append((pfn, e)) }
        }
        counts.valid &+= valid
        counts.invalid &+= invalid
        counts.identity &+= identity
        counts.foreign &+= foreign
        counts.faulty &+= faulty
        if valid > 0 { mask |= PfnMap.Bit.valid }
        if invalid > 0 { mask |= PfnMap.Bit.invalid }
        if identity > 0 { mask |= PfnMap.Bit.identity }
        if foreign > 0 { mask |= PfnMap.Bit.foreign }
        if faulty > 0 { mask |= PfnMap.Bit.faulty }
        return mask
    }

    /// True when every entry of the page is INVALID (Linux's shared missing/identity leaves).
    func allInvalid(_ page: UnsafeRawPointer) -> Bool {
        let words = pageSize / 8
        let p = page.assumingMemoryBound(to: UInt64.self)
        for i in 0..<words where p[i] != .max { return false }
        return true
    }
}

/// The per-entry check on its own, over leaf pages the caller already holds, for the
/// benchmark that compares it with a plain C loop on the same buffers. Same code path
/// as a scan (classification, M2P round trip, duplicate bitmap, finding collection).
public enum EntryCheckKernel {
    public struct Result: Sendable, Equatable {
        public var counts: EntryCounts
        public var findings: UInt64
    }

    /// - Parameters:
    ///   - leaves: `leafCount` consecutive 4096-byte leaf pages covering pfns from 0.
    ///   - entries: entries to check (<= leafCount * fpp).
    public static func run(leaves: UnsafeRawPointer, leafCount: Int, entries: UInt64, width: GuestWidth, maxMFN: UInt64,
                           m2p: UnsafeBufferPointer<UInt64>) -> Result {
        // A new bitmap each run, allocated and zeroed inside the caller's timed region as
        // the C reference does with its own.
        var checker = LeafChecker(width: width, maxMFN: maxMFN, m2p: m2p, probe: false, bitmap: MFNBitmap(maxMFN: maxMFN))
        var findings = FindingCollector(sampleLimit: 16)
        let fpp = width.fpp
        for k in 0..<leafCount {
            let first = UInt64(k * fpp)
            guard first < entries else { break }
            let n = Int(min(UInt64(fpp), entries - first))
            _ = checker.check(page: leaves + k * pageSize, firstPfn: first, count: n, findings: &findings)
        }
        let total = FindingKind.allCases.reduce(UInt64(0)) { $0 + findings.count($1) }
        return Result(counts: checker.counts, findings: total)
    }
}

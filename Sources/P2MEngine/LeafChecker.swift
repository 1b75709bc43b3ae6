/// Per-entry checks over mapped leaf pages: classification, M2P round trip, MFN range
/// and duplicate detection with one bit per host frame. This is the hot loop: it reads
/// through raw pointers, allocates nothing per entry and is specialised per width.
struct LeafChecker {
    let width: GuestWidth
    let maxMFN: UInt64
    let m2p: UnsafeBufferPointer<UInt64>
    /// One bit per MFN in [0, maxMFN]: set once a pfn has claimed the frame.
    let bitmap: UnsafeMutablePointer<UInt64>
    let bitmapWords: Int
    let probe: Bool

    var counts = EntryCounts()
    /// Entries naming a frame of their own (valid form), whether or not a check failed.
    var populated: UInt64 = 0
    /// (pfn, mfn) of entries to probe for mappability, flushed in batches.
    var pendingProbe: [(UInt64, UInt64)] = []

    init(width: GuestWidth, maxMFN: UInt64, m2p: UnsafeBufferPointer<UInt64>, probe: Bool) {
        self.width = width
        self.maxMFN = maxMFN
        self.m2p = m2p
        self.probe = probe
        // Guarded by the caller: maxMFN is the hypervisor's, not the guest's.
        bitmapWords = Int((maxMFN >> 6) + 1)
        bitmap = .allocate(capacity: bitmapWords)
        bitmap.initialize(repeating: 0, count: bitmapWords)
    }

    func deallocate() { bitmap.deallocate() }

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
            // A frame claimed twice cannot round-trip for both pfns; report the
            // duplicate alone rather than also counting its M2P consequence.
            let word = Int(e >> 6)
            let bit = UInt64(1) << (e & 63)
            if bitmap[word] & bit != 0 {
                faulty &+= 1
                findings.add(.duplicateMfn, FindingSample(pfn: pfn, mfn: e))
                continue
            }
            bitmap[word] |= bit
            let back = m2pBase.unsafelyUnwrapped[Int(e)]
            if back != pfn {
                faulty &+= 1
                findings.add(.m2pMismatch, FindingSample(pfn: pfn, mfn: e, expected: pfn, found: back))
                continue
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

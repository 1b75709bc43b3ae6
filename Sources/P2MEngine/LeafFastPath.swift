/// The common case of the leaf check, a leaf with nothing to report, in tight loops that
/// keep everything in registers. The general loop (LeafChecker.check) carries finding
/// collection, per-kind counters and duplicate attribution through every iteration; the
/// compiler spills most of it, which made it about 4x the cost of reading the bytes
/// (xenp2m-bench: engine/floor). Returns nil, with the duplicate bitmap as it was, for a
/// leaf with anything to report; the caller then runs the general loop, which finds and
/// attributes everything exactly as before.
///
/// 1a. A leaf of populated memory (every entry a plain frame number): classify, round-trip
///     through the M2P and claim in the bitmap in one pass, holding the current bitmap
///     word in a register (neighbouring pfns mostly name neighbouring frames).
/// 1b. Otherwise (INVALID, identity or foreign entries, or a frame already claimed):
///     classify and round-trip read-only, then claim.
/// A frame named twice inside the leaf fails the round trip (the M2P names one pfn), so
/// every frame a passing leaf claims is distinct, and undoing a pass means clearing the
/// bits it set.
extension LeafChecker {
    @inline(__always)
    mutating func cleanLeaf<W: FixedWidthInteger & UnsignedInteger>(_ entries: UnsafePointer<W>, _ firstPfn: UInt64, _ count: Int) -> UInt8? {
        let allOnes = UInt64(W.max)
        let foreignBit = UInt64(1) << UInt64(W.bitWidth - 1)
        let identityBit = UInt64(1) << UInt64(W.bitWidth - 2)
        let m2pCount = UInt64(m2p.count)
        guard m2pCount > 0, let m2pBase = m2p.baseAddress else { return nil }
        let limit = min(maxMFN, m2pCount &- 1)
        let bitmap = self.bitmap
        var valid: UInt64 = 0, invalid: UInt64 = 0, identity: UInt64 = 0, foreign: UInt64 = 0
        var bad: UInt64 = 0

        let dirty = self.dirty

        // 1a. A leaf of populated memory, every entry a plain frame number: classify,
        //     round-trip and claim in one pass, the bitmap word held in a register.
        //     Anything else stops the pass early (or fails it at the end) and undoes it.
        var curWord = -1
        var curBits: UInt64 = 0
        var i = 0
        var stopped = false
        while i < count {
            let e = UInt64(entries[i])
            if e >= identityBit { stopped = true; break } // INVALID, foreign or identity
            let m = e > limit ? limit : e
            bad |= (e ^ m) | (m2pBase[Int(m)] ^ (firstPfn &+ UInt64(i)))
            let word = Int(m >> 6)
            if word != curWord {
                if curWord >= 0 { bitmap[curWord] = curBits }
                curWord = word
                curBits = bitmap[word]
                dirty[word >> MFNBitmap.chunkShift] = 1
            }
            let bit = UInt64(1) << (m & 63)
            if curBits & bit != 0 { stopped = true; break } // claimed (earlier leaf or this one)
            curBits |= bit
            i &+= 1
        }
        if curWord >= 0 { bitmap[curWord] = curBits }
        if !stopped && bad == 0 {
            valid = UInt64(count)
        } else {
            // Every bit set so far was clear before (a claimed bit stops the pass first).
            for k in 0..<i {
                let m = min(UInt64(entries[k]), limit)
                bitmap[Int(m >> 6)] &= ~(UInt64(1) << (m & 63))
            }
            if bad != 0 { return nil }
            // 1b. A mixed leaf (or a claimed frame): classify first, read only...
            for k in 0..<count {
                let e = UInt64(entries[k])
                let pfn = firstPfn &+ UInt64(k)
                if e == allOnes {
                    invalid &+= 1
                } else if e & (foreignBit | identityBit) != 0 {
                    if e & foreignBit != 0 {
                        foreign &+= 1
                    } else {
                        identity &+= 1
                        bad |= (e & ~identityBit) ^ pfn
                    }
                } else {
                    valid &+= 1
                    let m = e > limit ? limit : e
                    bad |= (e ^ m) | (m2pBase[Int(m)] ^ pfn)
                }
            }
            guard bad == 0 else { return nil }
            // ...then claim, stopping at a claimed frame (every frame of the leaf is
            // distinct, see above), which hands the leaf to the general loop.
            var claimedAt = -1
            for k in 0..<count {
                let e = UInt64(entries[k])
                guard e < identityBit else { continue }
                let bit = UInt64(1) << (e & 63)
                if bitmap[Int(e >> 6)] & bit != 0 { claimedAt = k; break }
                bitmap[Int(e >> 6)] |= bit
                dirty[Int(e >> 6) >> MFNBitmap.chunkShift] = 1
            }
            if claimedAt >= 0 {
                for k in 0..<claimedAt {
                    let e = UInt64(entries[k])
                    if e < identityBit { bitmap[Int(e >> 6)] &= ~(UInt64(1) << (e & 63)) }
                }
                return nil
            }
        }

        populated &+= valid
        counts.valid &+= valid
        counts.invalid &+= invalid
        counts.identity &+= identity
        counts.foreign &+= foreign
        var mask: UInt8 = 0
        if valid > 0 { mask |= PfnMap.Bit.valid }
        if invalid > 0 { mask |= PfnMap.Bit.invalid }
        if identity > 0 { mask |= PfnMap.Bit.identity }
        if foreign > 0 { mask |= PfnMap.Bit.foreign }
        return mask
    }
}

import Foundation

// Incremental verification: what a scan remembers of a guest's leaves for the next one.
//
// A full check costs a random-ish M2P read and a bitmap update per populated pfn; on a
// 2 TiB fleet that is over a CPU-second per poll. Most leaves do not change between
// polls, so a scan with a memo still maps and reads every leaf page (any change to the
// P2M is seen by the next scan), but checks per entry only the leaves that
//   - changed: other leaf frame, other entry count, or other fingerprint of the entries;
//   - were not clean last time (any finding in the leaf): their findings are re-derived
//     every scan, so a corrupt leaf never drops out of the report;
//   - are due for re-verification: each scan takes the next 1/N of the leaves, so every
//     entry is checked against the M2P (which can change without the P2M changing) at
//     least once every N scans.
// An unchanged clean leaf contributes its remembered counts and pfn-map mask instead.
// Duplicate MFNs are found by the bitmap over the leaves checked in the same scan: a
// frame newly named twice always fails the M2P round trip on one side (the M2P names
// one pfn), which is reported at once as m2p_mismatch. The leaf of the pfn the M2P names
// (the owner) is then checked too: in the same scan when it comes later, in the next one
// otherwise, and in every scan while the impostor's leaf keeps failing, so the
// duplicate_mfn attribution follows within two scans and does not come and go.

/// A keyed fingerprint of leaf contents: NH (the universal hash of UMAC), two
/// independent lanes over the page's 32-bit words. The key is random per scanner and
/// never leaves dom0, so a guest cannot aim for a collision; for two different contents
/// of a leaf the lanes collide with probability about 2^-32 each.
final class LeafFingerprint: @unchecked Sendable {
    /// Words per page plus the second lane's offset.
    static let keyWords = pageSize / 4 + 4
    let key: UnsafeMutablePointer<UInt32>

    init() {
        key = .allocate(capacity: Self.keyWords)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<Self.keyWords { key[i] = UInt32(truncatingIfNeeded: rng.next()) }
    }

    deinit { key.deallocate() }

    /// Fingerprint of the first `bytes` bytes of a page (a multiple of 4).
    @inline(__always)
    func of(_ page: UnsafeRawPointer, bytes: Int) -> (UInt64, UInt64) {
        let w = page.assumingMemoryBound(to: UInt32.self)
        let words = bytes >> 2
        var a: UInt64 = 0, b: UInt64 = 0
        var i = 0
        while i + 1 < words {
            let x = w[i], y = w[i + 1]
            a &+= UInt64(x &+ key[i]) &* UInt64(y &+ key[i + 1])
            b &+= UInt64(x &+ key[i + 2]) &* UInt64(y &+ key[i + 3])
            i &+= 2
        }
        if i < words {
            a &+= UInt64(w[i] &+ key[i]) &* UInt64(key[i + 1])
            b &+= UInt64(w[i] &+ key[i + 2]) &* UInt64(key[i + 3])
        }
        // The length goes in too, so a shorter leaf never matches a longer one.
        return (a ^ UInt64(words), b)
    }
}

/// What a scan remembers of one guest's leaves (see the top of this file). Owned by the
/// scanner between scans, by one scan at a time while it runs.
final class LeafMemo {
    struct Leaf {
        var mfn: UInt64 = unreadableLeaf
        var fp0: UInt64 = 0
        var fp1: UInt64 = 0
        var valid: UInt16 = 0
        var invalid: UInt16 = 0
        var identity: UInt16 = 0
        var foreign: UInt16 = 0
        var entries: UInt16 = 0
        var mask: UInt8 = 0
        /// Checked, with no finding: may be skipped while unchanged.
        var clean = false
    }

    /// The guest it describes: a new UUID on the domid, another width or another host
    /// size starts over.
    let uuid: [UInt8]
    let width: GuestWidth
    let maxMFN: UInt64
    var leaves: [Leaf] = []
    /// Scans done with this memo (picks each scan's share of re-verification).
    var scans: UInt64 = 0

    init(uuid: [UInt8], width: GuestWidth, maxMFN: UInt64) {
        self.uuid = uuid
        self.width = width
        self.maxMFN = maxMFN
    }

    func fits(uuid: [UInt8], width: GuestWidth, maxMFN: UInt64) -> Bool {
        self.uuid == uuid && self.width == width && self.maxMFN == maxMFN
    }
}

/// One scan's use of a memo: which leaves are due, what to reuse, what to remember.
final class IncrementalPass {
    let memo: LeafMemo
    let fingerprint: LeafFingerprint
    /// Re-verify every leaf whose index is `phase` modulo `period`.
    let period: UInt64
    let phase: UInt64
    /// Leaves whose remembered check stood in for the per-entry check.
    var reused: UInt64 = 0

    /// `period` 1 re-verifies every leaf (and refreshes the memo).
    init(memo: LeafMemo, fingerprint: LeafFingerprint, period: Int) {
        self.memo = memo
        self.fingerprint = fingerprint
        self.period = UInt64(max(1, period))
        phase = memo.scans % self.period
        memo.scans &+= 1
    }

    /// Sizes the memo to this walk's leaves (once per walk; a retried walk may differ).
    func begin(leafCount: Int) {
        if memo.leaves.count != leafCount {
            // max_pfn moved: leaves past the old end are new, the rest keep their memory.
            memo.leaves = Array(memo.leaves.prefix(leafCount)) + [LeafMemo.Leaf](repeating: LeafMemo.Leaf(), count: max(0, leafCount - memo.leaves.count))
        }
    }

    /// Remembered counts of `leaf`, when it may be skipped: not due, clean, unchanged.
    @inline(__always)
    func reusable(_ leaf: Int, mfn: UInt64, entries: Int, fp: (UInt64, UInt64)) -> LeafMemo.Leaf? {
        guard UInt64(leaf) % period != phase else { return nil }
        let m = memo.leaves[leaf]
        guard m.clean, m.mfn == mfn, Int(m.entries) == entries, m.fp0 == fp.0, m.fp1 == fp.1 else { return nil }
        return m
    }

    func remember(_ leaf: Int, mfn: UInt64, entries: Int, fp: (UInt64, UInt64), counts: EntryCounts, mask: UInt8, clean: Bool) {
        memo.leaves[leaf] = LeafMemo.Leaf(mfn: mfn, fp0: fp.0, fp1: fp.1, valid: UInt16(truncatingIfNeeded: counts.valid),
                                          invalid: UInt16(truncatingIfNeeded: counts.invalid),
                                          identity: UInt16(truncatingIfNeeded: counts.identity),
                                          foreign: UInt16(truncatingIfNeeded: counts.foreign),
                                          entries: UInt16(truncatingIfNeeded: entries), mask: mask, clean: clean)
    }

    /// A leaf that could not be read or was not checked on its own: nothing to reuse.
    func forget(_ leaf: Int) {
        if leaf < memo.leaves.count { memo.leaves[leaf].clean = false }
    }

    func forgetAll() {
        for i in memo.leaves.indices { memo.leaves[i].clean = false }
    }
}

/// Memos of the guests a scanner has scanned incrementally, by domid.
final class LeafMemoStore: @unchecked Sendable {
    private let lock = NSLock()
    private var memos: [DomID: LeafMemo] = [:]

    /// Takes the memo out while a scan uses it: a concurrent scan of the same domain
    /// finds none and verifies everything (the later of the two is kept).
    func take(_ domid: DomID) -> LeafMemo? {
        lock.lock(); defer { lock.unlock() }
        return memos.removeValue(forKey: domid)
    }

    func put(_ domid: DomID, _ memo: LeafMemo) {
        lock.lock(); defer { lock.unlock() }
        memos[domid] = memo
    }

    func forget(_ domid: DomID) {
        lock.lock(); defer { lock.unlock() }
        memos[domid] = nil
    }

    func retain(_ domids: Set<DomID>) {
        lock.lock(); defer { lock.unlock() }
        memos = memos.filter { domids.contains($0.key) }
    }

    var count: Int {
        lock.lock(); defer { lock.unlock() }
        return memos.count
    }
}

/// How many incremental scans of a domain may pass before a change shows up as its
/// finding, with `period` = ScanOptions.verifyPeriodScans (README "Detection latency").
public enum DetectionLatency {
    /// A change the guest makes to its P2M (an entry, a leaf, the structure, the shared
    /// info): the next scan reads every leaf and checks every changed one.
    public static let p2mChange = 1

    /// A change of Xen's M2P alone (the P2M entry still names the same frame): the next
    /// scan that re-verifies the entry's leaf, at most `period` scans away.
    public static func m2pOnlyChange(period: Int) -> Int { max(1, period) }

    /// The duplicate_mfn attribution of a frame newly named twice (its m2p_mismatch half
    /// is a P2M change, seen at the next scan): that scan when the owner's leaf comes
    /// after the impostor's, the one after otherwise.
    public static let duplicateAttribution = 2
}

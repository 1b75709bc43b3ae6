/// The shape of a radix structure that ends in P2M leaf pages. Both published formats
/// are radix trees over "leaf page numbers" (vpn):
///  - the MFN tree: fll -> fl -> leaves, vpn = leaf index, entries are guest-width MFNs;
///  - the linear list: page tables from p2m_cr3, vpn = vaddr >> 12, entries are PTEs.
/// One walker serves both, for any number of levels.
public struct RadixShape: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Entries are bare MFNs of guest width (4 or 8 bytes).
        case mfnTree(GuestWidth)
        /// Entries are 8-byte x86 PTEs (present bit, PSE at levels 2 and 3).
        case pageTable
    }

    public let kind: Kind
    /// Interior levels: the root is `levels`, level 1 entries name leaf pages.
    public let levels: Int
    /// Index bits at each level, [level1, level2, ...].
    public let indexBits: [Int]

    public var entryBytes: Int {
        if case .mfnTree(let w) = kind { return w.bytes }
        return 8
    }

    /// Bits of vpn covered by one entry at `level`.
    func coverBits(_ level: Int) -> Int { indexBits[0..<(level - 1)].reduce(0, +) }

    func fanout(_ level: Int) -> Int { min(1 << indexBits[level - 1], pageSize / entryBytes) }

    /// Virtual-address bits the shape translates: every level's index bits plus the page
    /// offset (48 for 4-level, 57 for 5-level, 32 for PAE).
    public var vaBits: Int { Int(pageShift) + indexBits.reduce(0, +) }

    /// A P2M tree of `levels` levels counting the leaves (Xen's fll tree is 3).
    public static func mfnTree(levels: Int, width: GuestWidth) -> RadixShape {
        precondition(levels >= 2)
        let bits = width.fpp.trailingZeroBitCount
        return RadixShape(kind: .mfnTree(width), levels: levels - 1, indexBits: Array(repeating: bits, count: levels - 1))
    }

    /// x86 page tables: 4 or 5 levels of 9 bits (64-bit), or 3-level PAE (2-bit top).
    public static func pageTables(levels: Int) -> RadixShape {
        RadixShape(kind: .pageTable, levels: levels, indexBits: Array(repeating: 9, count: levels))
    }

    public static let pae = RadixShape(kind: .pageTable, levels: 3, indexBits: [9, 9, 2])
}

/// The x86 page-table entry bits the list walk reads (Intel SDM vol. 3, 4.5).
enum X86PTE {
    static let present: UInt64 = 1 << 0
    /// PSE: at levels 2 and 3 the entry maps a 2 MiB or 1 GiB page, not a table.
    static let pageSize: UInt64 = 1 << 7
    /// Physical address bits 12-51 (Xen's PADDR_BITS is 52).
    static let addressMask: UInt64 = 0x000f_ffff_ffff_f000
}

/// Sentinel for a leaf page that could not be reached (its parent was bad).
public let unreadableLeaf: UInt64 = .max

struct WalkResult {
    /// MFN of leaf page i (covering pfns i*fpp ..< (i+1)*fpp), or `unreadableLeaf`.
    var leaves: [UInt64]
    /// Structure frames seen, with the level they were used at (for cycle checks).
    var structureFrames: [UInt64: Int]
    /// Whether the walk met no structural problem.
    var clean: Bool
    /// Leaf count after trimming trailing shared ranges (<= requested).
    var trimmedLeafCount: Int
}

/// Walks a radix structure level by level: each level's frames are mapped in batches
/// (so map calls ~ levels + leaves / batch), every guest-provided number is checked
/// against the host's max MFN before use, and no frame is followed twice at
/// different levels, so hostile structures cannot loop.
struct RadixWalker {
    let shape: RadixShape
    let format: P2MFormat
    let maxMFN: UInt64
    let session: HostSession

    private struct Node {
        var mfn: UInt64
        var vpnBase: UInt64
    }

    /// - Parameters:
    ///   - root: MFN of the top page.
    ///   - vpnStart: first leaf vpn (0 for trees; p2m_vaddr >> 12 for lists).
    ///   - leafCount: leaves wanted (ceil(max_pfn / fpp)).
    ///   - trim: apply Xen's max_pfn trimming on level-2 references.
    func walk(root: UInt64, vpnStart: UInt64, leafCount: Int, trim: Bool,
              findings: inout FindingCollector) throws(HostError) -> WalkResult {
        var leaves = [UInt64](repeating: unreadableLeaf, count: leafCount)
        var frameLevel: [UInt64: Int] = [:]
        var clean = true
        var wanted = leafCount
        let levelTop = shape.levels

        if root == 0 || root > maxMFN {
            findings.add(.structureMfnInvalid, FindingSample(mfn: root, level: levelTop + 1, index: 0, format: format, note: "root"))
            return WalkResult(leaves: leaves, structureFrames: [:], clean: false, trimmedLeafCount: leafCount)
        }

        var nodes = [Node(mfn: root, vpnBase: vpnStart & ~((UInt64(1) << UInt64(shape.coverBits(levelTop) + shape.indexBits[levelTop - 1])) &- 1))]
        frameLevel[root] = levelTop

        var level = levelTop
        while level >= 1, !nodes.isEmpty {
            let cover = UInt64(shape.coverBits(level))
            let fanout = shape.fanout(level)
            let vpnEnd = vpnStart &+ UInt64(wanted)
            var children: [Node] = []
            // Raw level-2 references in vpn order, for Xen's max_pfn trimming.
            var level2Raw: [(vpn: UInt64, raw: UInt64)] = []
            // Frames of this level already walked once, and whether they are uniform.
            var seenAtLevel: [UInt64: Bool] = [:]

            var chunkStart = 0
            while chunkStart < nodes.count {
                // Structure levels are small (1/512 of the leaves below them), so they go
                // in one call up to a generous cap: map calls ~ levels + leaves / batch.
                let chunk = nodes[chunkStart..<min(nodes.count, chunkStart + max(session.batchFrames, 4096))]
                chunkStart += chunk.count
                // Map each distinct frame of the chunk once.
                var slot: [UInt64: Int] = [:]
                var mfns: [UInt64] = []
                for n in chunk where slot[n.mfn] == nil {
                    slot[n.mfn] = mfns.count
                    mfns.append(n.mfn)
                }
                let mapping = try session.map(mfns)

                for n in chunk {
                    guard let page = mapping.page(slot[n.mfn]!) else {
                        findings.add(.structureUnmappable, FindingSample(mfn: n.mfn, level: level + 1, index: n.vpnBase, format: format,
                                                                        note: "errno \(mapping.errors[slot[n.mfn]!])"))
                        clean = false
                        continue
                    }
                    if let uniform = seenAtLevel[n.mfn] {
                        // A frame referenced again at the same level: legitimate only for
                        // Linux's shared pages, whose entries all name one frame.
                        if !uniform {
                            findings.add(.sharedFrameMisuse, FindingSample(mfn: n.mfn, level: level + 1, index: n.vpnBase, format: format))
                            clean = false
                            continue
                        }
                    } else {
                        seenAtLevel[n.mfn] = isUniform(page)
                    }
                    session.noteRead(bytes: pageSize)

                    // Entry range of this page that covers [vpnStart, vpnEnd).
                    let firstIdx = vpnStart > n.vpnBase ? Int((vpnStart - n.vpnBase) >> cover) : 0
                    guard vpnEnd > max(n.vpnBase, vpnStart) else { continue }
                    let lastIdx = min(fanout - 1, Int((vpnEnd - 1 - n.vpnBase) >> cover))
                    if firstIdx > lastIdx { continue }

                    for idx in firstIdx...lastIdx {
                        let raw = readEntry(page, idx)
                        let entryVpn = n.vpnBase &+ (UInt64(idx) << cover)
                        if level == 2 { level2Raw.append((entryVpn, raw)) }
                        switch decode(raw, level: level) {
                        case .frame(let m):
                            guard m != 0, m <= maxMFN else {
                                findings.add(.structureMfnInvalid, FindingSample(mfn: m, level: level, index: UInt64(idx), format: format))
                                clean = false
                                continue
                            }
                            // Child frames are used at level - 1 (leaves at 0, never recorded):
                            // a frame already used at any other level means a cycle.
                            if let other = frameLevel[m], other != level - 1 {
                                findings.add(.structureCycle, FindingSample(mfn: m, level: level, index: UInt64(idx), format: format,
                                                                           note: "frame already used at level \(other)"))
                                clean = false
                                continue
                            }
                            if level == 1 {
                                let li = Int(entryVpn &- vpnStart)
                                if li >= 0 && li < leaves.count { leaves[li] = m }
                            } else {
                                if frameLevel[m] == nil { frameLevel[m] = level - 1 }
                                children.append(Node(mfn: m, vpnBase: entryVpn))
                            }
                        case .large(let m, let pagesLog2):
                            findings.add(.largePageMapping, FindingSample(mfn: m, level: level, index: UInt64(idx), format: format,
                                                                         note: pagesLog2 == 9 ? "2 MiB page" : "1 GiB page"))
                            let span = UInt64(1) << UInt64(pagesLog2)
                            guard m != 0, m &+ span &- 1 <= maxMFN, m & (span - 1) == 0 else {
                                findings.add(.structureMfnInvalid, FindingSample(mfn: m, level: level, index: UInt64(idx), format: format, note: "large page"))
                                clean = false
                                continue
                            }
                            let lo = max(entryVpn, vpnStart)
                            let hi = min(entryVpn &+ span, vpnEnd)
                            var v = lo
                            while v < hi {
                                let li = Int(v &- vpnStart)
                                if li < leaves.count { leaves[li] = m &+ (v &- entryVpn) }
                                v &+= 1
                            }
                        case .notPresent:
                            findings.add(.pteNotPresent, FindingSample(level: level, index: UInt64(idx), format: format, note: "vpn \(hex(entryVpn))"))
                            clean = false
                        }
                    }
                }
            }

            if level == 2 && trim {
                // Xen's tools: a trailing run of identical level-2 references can only be
                // the shared missing page, so the real end is lower. Keep the run's first
                // entry (it is walked and its content verified) and drop the rest.
                if let newWanted = trimmedLeaves(level2Raw, cover: cover, vpnStart: vpnStart, wanted: wanted) {
                    wanted = newWanted
                    children = children.filter { $0.vpnBase < vpnStart &+ UInt64(wanted) }
                }
            }
            nodes = children
            level -= 1
        }
        if wanted < leaves.count { leaves.removeLast(leaves.count - wanted) }
        return WalkResult(leaves: leaves, structureFrames: frameLevel, clean: clean, trimmedLeafCount: wanted)
    }

    /// Returns the new leaf count if the trailing run of identical level-2 entries
    /// (length >= 2, contiguous in vpn) can be trimmed.
    private func trimmedLeaves(_ refs: [(vpn: UInt64, raw: UInt64)], cover: UInt64, vpnStart: UInt64, wanted: Int) -> Int? {
        guard refs.count >= 2, let last = refs.last else { return nil }
        let perEntry = UInt64(1) << cover
        var runStart = refs.count - 1
        while runStart > 0 && refs[runStart - 1].raw == last.raw && refs[runStart - 1].vpn &+ perEntry == refs[runStart].vpn {
            runStart -= 1
        }
        guard runStart < refs.count - 1 else { return nil }
        let endVpn = refs[runStart].vpn &+ perEntry
        guard endVpn > vpnStart else { return nil }
        let newWanted = min(UInt64(wanted), endVpn &- vpnStart)
        return newWanted < UInt64(wanted) ? Int(newWanted) : nil
    }

    private enum Decoded {
        case frame(UInt64)
        case large(UInt64, pagesLog2: Int)
        case notPresent
    }

    @inline(__always)
    private func readEntry(_ page: UnsafeRawPointer, _ idx: Int) -> UInt64 {
        if shape.entryBytes == 4 {
            let v = page.loadUnaligned(fromByteOffset: idx &* 4, as: UInt32.self)
            return v == .max ? UInt64.max : UInt64(v)
        }
        return page.loadUnaligned(fromByteOffset: idx &* 8, as: UInt64.self)
    }

    private func isUniform(_ page: UnsafeRawPointer) -> Bool {
        let n = pageSize / 8
        let first = page.loadUnaligned(as: UInt64.self)
        for i in 1..<n where page.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self) != first { return false }
        return true
    }

    private func decode(_ raw: UInt64, level: Int) -> Decoded {
        switch shape.kind {
        case .mfnTree:
            return .frame(raw)
        case .pageTable:
            guard raw & X86PTE.present != 0 else { return .notPresent }
            let frame = (raw & X86PTE.addressMask) >> pageShift
            if (level == 2 || level == 3) && raw & X86PTE.pageSize != 0 {
                return .large(frame, pagesLog2: shape.coverBits(level))
            }
            return .frame(frame)
        }
    }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

import P2MEngine

/// Encoded word values for seeds (see `ValueTag`).
public enum SeedValue {
    public static let zero: [UInt8] = [ValueTag.zero.rawValue]
    public static let invalid: [UInt8] = [ValueTag.invalid.rawValue]
    public static func frame(_ j: UInt8) -> [UInt8] { [ValueTag.frameMFN.rawValue, j] }
    public static func pte(_ j: UInt8) -> [UInt8] { [ValueTag.framePTE.rawValue, j] }
    public static func raw(_ v: UInt64) -> [UInt8] {
        var w = ByteWriter()
        w.value(.raw64)
        w.u64(v)
        return w.bytes
    }
}

/// A raw-mode input described field by field, in the order `RawGuestHost` decodes it.
public struct RawSeed {
    public enum Fill {
        case zeros, ones
        case uniform([UInt8]), uniform8([UInt8])
        case table(first: UInt8, count: UInt16, rest: [UInt8])
        case ptes(first: UInt8, count: UInt16, rest: [UInt8])
        case leaf(index: UInt16, count: UInt16)
        case garbage(UInt64)
    }

    public struct Frame {
        public var mfn: UInt16
        public var refuse = false
        public var fill: Fill
        /// (index, value): index | 0x8000 writes an 8-byte word, else a guest-width word.
        public var writes: [(UInt16, [UInt8])] = []
    }

    public var width32 = false
    public var levels5 = false
    public var probe = false
    public var batch: UInt8 = 64
    public var retries: UInt8 = 3
    public var maxMFN: UInt16 = 4095
    public var maxPages: UInt32 = 0
    public var totPages: UInt32 = 0
    public var nrGpfns: UInt32 = 0
    public var dataBase: UInt16 = 1024
    public var frames: [Frame] = []
    /// (kind, payload) per field, as decoded in `RawGuestHost.init`.
    public var maxPfn: (UInt8, [UInt8]) = (0, [0, 0])
    public var fll: (UInt8, [UInt8]) = (0, [])
    public var cr3: (UInt8, [UInt8]) = (0, [])
    public var vaddr: (UInt8, [UInt8]) = (0, [])
    public var generations: [UInt8] = [0]

    public init() {}

    public var bytes: [UInt8] {
        var w = ByteWriter()
        w.u8(0)
        w.u8((width32 ? 1 : 0) | (probe ? 8 : 0) | (levels5 ? 16 : 0))
        w.u8((batch - 1) & 63 | retries << 6)
        w.u8(4)
        w.u8(63)
        w.u16(maxMFN)
        w.u32(maxPages)
        w.u32(totPages)
        w.u32(totPages)
        w.u32(nrGpfns)
        w.u16(dataBase)
        w.u8(0)
        w.u8(UInt8(frames.count - 1))
        for f in frames { w.u16(f.mfn) }
        for f in frames {
            let fill: UInt8
            switch f.fill {
            case .zeros: fill = 0
            case .ones: fill = 1
            case .uniform: fill = 2
            case .uniform8: fill = 3
            case .table: fill = 4
            case .ptes: fill = 5
            case .leaf: fill = 6
            case .garbage: fill = 7
            }
            w.u8(fill << 1 | (f.refuse ? 1 : 0))
            switch f.fill {
            case .zeros, .ones: break
            case .uniform(let v), .uniform8(let v): for b in v { w.u8(b) }
            case .table(let j, let c, let rest), .ptes(let j, let c, let rest):
                w.u8(j)
                w.u16(c)
                for b in rest { w.u8(b) }
            case .leaf(let k, let c):
                w.u16(k)
                w.u16(c)
            case .garbage(let s): w.u64(s)
            }
            w.u8(UInt8(f.writes.count))
            for (i, v) in f.writes {
                w.u16(i)
                for b in v { w.u8(b) }
            }
        }
        for (kind, payload) in [maxPfn, fll, cr3, vaddr] {
            w.u8(kind)
            for b in payload { w.u8(b) }
        }
        w.u8(UInt8(generations.count - 1))
        for g in generations {
            w.u8(g)
            w.u8(0)
        }
        w.u8(0)
        return w.bytes
    }
}

/// The seed corpus: the simulator's layouts (demo fleet and test shapes, scaled down),
/// each clean and with faults, plus hand-built raw guests that are valid in one format.
public enum FuzzSeeds {
    public static var all: [(name: String, bytes: [UInt8])] { simSeeds + rawSeeds + coreSeeds }

    /// The dump-core mode's starting point: an ELF64 ET_CORE x86-64 header with an empty
    /// section table (the reader refuses it; mutations grow sections from there).
    static var coreSeeds: [(name: String, bytes: [UInt8])] {
        var b: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        le(UInt16(4)); le(UInt16(62)); le(UInt32(1))          // e_type ET_CORE, e_machine x86-64, e_version
        le(UInt64(0)); le(UInt64(0)); le(UInt64(64))          // e_entry, e_phoff, e_shoff
        le(UInt32(0)); le(UInt16(64)); le(UInt16(0)); le(UInt16(0)) // e_flags, e_ehsize, e_phentsize, e_phnum
        le(UInt16(64)); le(UInt16(1)); le(UInt16(0))          // e_shentsize, e_shnum, e_shstrndx
        b += [UInt8](repeating: 0, count: 64)                 // section header 0 (SHN_UNDEF)
        return [("core-empty-sections", b)]
    }

    /// Sim-mode bytes: flags, populated, extra, second range, identity, vaddr, slack, options, action.
    static func sim(width32: Bool = false, formats: UInt8 = 0, levels5: Bool = false, populated: UInt16, extra: UInt16,
                    identity: [(UInt16, UInt16)] = [], action: [UInt8] = [0]) -> [UInt8] {
        var w = ByteWriter()
        w.u8(1)
        w.u8((width32 ? 1 : 0) | formats << 1 | (levels5 ? 8 : 0))
        w.u16(populated)
        w.u16(extra)
        w.u16(0)
        w.u8(0)
        w.u8(UInt8(identity.count))
        for (s, l) in identity {
            w.u16(s)
            w.u16(l)
        }
        w.u8(0)
        w.u16(0)
        w.u8(1)
        w.u8(63)
        w.u8(3)
        w.u8(63)
        for b in action { w.u8(b) }
        return w.bytes
    }

    static var simSeeds: [(String, [UInt8])] {
        [
            ("sim-web-tree-both", sim(populated: 4096, extra: 0)),
            ("sim-db-balloon", sim(populated: 2048, extra: 6144)),
            ("sim-bigmem-list-only", sim(formats: 1, populated: 2048, extra: 20000)),
            ("sim-legacy32-identity", sim(width32: true, populated: 4096, extra: 0, identity: [(0xa0, 0x60)])),
            ("sim-tree-only-32", sim(width32: true, formats: 2, populated: 3000, extra: 1000)),
            ("sim-la57", sim(levels5: true, populated: 1500, extra: 600)),
            ("sim-empty", sim(populated: 0, extra: 0)),
            // Faults: kind byte last (see SimCase.fault): m2p mismatch, cycle, shared leaf, generation.
            ("sim-fault-m2p", sim(populated: 4096, extra: 0, action: [1, 0x34, 0x12, 3, 0, 0, 0]) ),
            ("sim-fault-cycle", sim(populated: 4096, extra: 2048, action: [1, 0, 0, 2, 0, 0, 10])),
            ("sim-fault-shared-leaf", sim(populated: 4096, extra: 0, action: [1, 0, 0, 5, 0, 0, 9])),
            ("sim-fault-generation", sim(populated: 1024, extra: 0, action: [1, 0, 0, 0, 0, 0, 16])),
            ("sim-corrupt", sim(populated: 2048, extra: 2048, action: [2, 3, 0, 0, 5, 0, 2, 1, 1, 0, 9, 0, 0, 6, 0, 0, 0, 3, 0]))
        ]
    }

    static var rawSeeds: [(String, [UInt8])] {
        var out: [(String, [UInt8])] = []

        // 64-bit tree: fll -> mid -> 2 leaves (512 + 100 populated).
        var t = RawSeed()
        t.maxPages = 1024
        t.totPages = 612
        t.nrGpfns = 1024
        t.frames = [
            .init(mfn: 10, fill: .table(first: 1, count: 1, rest: SeedValue.zero)),
            .init(mfn: 11, fill: .table(first: 2, count: 2, rest: SeedValue.zero)),
            .init(mfn: 12, fill: .leaf(index: 0, count: 512)),
            .init(mfn: 13, fill: .leaf(index: 1, count: 100)),
        ]
        t.maxPfn = (1, [2])
        t.fll = (2, [0])
        out.append(("raw-tree64", t.bytes))

        // 32-bit tree: 1024 entries per page.
        var t32 = t
        t32.width32 = true
        t32.totPages = 1024 + 100
        t32.nrGpfns = 2048
        t32.frames[2].fill = .leaf(index: 0, count: 1024)
        t32.frames[3].fill = .leaf(index: 1, count: 100)
        out.append(("raw-tree32", t32.bytes))

        // 64-bit linear list, 4 levels at Linux's default p2m_vaddr.
        let vpn: UInt64 = (0xffff_c900_0000_0000 & ((1 << 48) - 1)) >> 12
        func idx(_ level: UInt64) -> UInt16 { UInt16((vpn >> (9 * (level - 1))) & 511) | 0x8000 }
        var l = RawSeed()
        l.maxPages = 1024
        l.totPages = 612
        l.nrGpfns = 1024
        l.frames = [
            .init(mfn: 20, fill: .zeros, writes: [(idx(4), SeedValue.pte(1))]),
            .init(mfn: 21, fill: .zeros, writes: [(idx(3), SeedValue.pte(2))]),
            .init(mfn: 22, fill: .zeros, writes: [(idx(2), SeedValue.pte(3))]),
            .init(mfn: 23, fill: .zeros, writes: [(idx(1), SeedValue.pte(4)), (idx(1) + 1, SeedValue.pte(5))]),
            .init(mfn: 24, fill: .leaf(index: 0, count: 512)),
            .init(mfn: 25, fill: .leaf(index: 1, count: 100)),
        ]
        l.maxPfn = (1, [2])
        l.fll = (1, [])
        l.cr3 = (1, [0])
        l.vaddr = (0, [])
        out.append(("raw-list64", l.bytes))

        // The same list with both formats: the tree names the same leaves.
        var both = l
        both.frames += [
            .init(mfn: 30, fill: .table(first: 7, count: 1, rest: SeedValue.zero)),
            .init(mfn: 31, fill: .table(first: 4, count: 2, rest: SeedValue.zero)),
        ]
        both.fll = (2, [6])
        out.append(("raw-both64", both.bytes))

        // Hostile starting points: a self-referencing fll, a page table naming its own
        // root, garbage everywhere, generation odd forever.
        var selfRef = t
        selfRef.frames[0].fill = .uniform(SeedValue.frame(0))
        out.append(("raw-fll-self", selfRef.bytes))
        var ptCycle = l
        ptCycle.frames[2].writes = [(idx(2), SeedValue.pte(0))]
        out.append(("raw-pt-cycle", ptCycle.bytes))
        var garbage = l
        for i in garbage.frames.indices { garbage.frames[i].fill = .garbage(UInt64(i) &* 0x1234_5678_9abc) }
        out.append(("raw-garbage", garbage.bytes))
        var odd = t
        odd.generations = [1, 3, 5]
        out.append(("raw-generation-odd", odd.bytes))
        return out
    }
}

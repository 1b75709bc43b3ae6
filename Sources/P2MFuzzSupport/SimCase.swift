#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import P2MEngine
import P2MSimulator

/// Forwards to a SimulatedHost, counts like the raw host, remembers every frame the
/// engine mapped (in first-use order) and overwrites chosen words of chosen frames in
/// what it hands back: corruption of a correctly built guest, through public API only.
public final class OverlayHost: P2MHost, @unchecked Sendable {
    public let inner: SimulatedHost
    public let meter = FrameMeter()
    public private(set) var seen: [UInt64] = []
    private var seenSet: Set<UInt64> = []
    /// mfn -> [(byte offset, 8-byte value)]
    var patches: [UInt64: [(Int, UInt64)]] = [:]

    public init(_ inner: SimulatedHost) { self.inner = inner }

    public var backendName: String { inner.backendName }
    public func listDomains() throws(HostError) -> [DomainInfo] { try inner.listDomains() }
    public func domainInfo(_ domid: DomID) throws(HostError) -> DomainInfo {
        meter.domainInfoCalls += 1
        return try inner.domainInfo(domid)
    }
    public func guestWidth(_ domid: DomID) throws(HostError) -> GuestWidth { try inner.guestWidth(domid) }
    public func nrGpfns(_ domid: DomID) throws(HostError) -> UInt64 { try inner.nrGpfns(domid) }
    public func maxMFN() throws(HostError) -> UInt64 { try inner.maxMFN() }
    public func sharedInfoPage(_ domid: DomID, frame: UInt64) throws(HostError) -> [UInt8] {
        meter.sharedInfoReads += 1
        return try inner.sharedInfoPage(domid, frame: frame)
    }
    public func mapM2P(maxMFN: UInt64) throws(HostError) -> M2PMapping { try inner.mapM2P(maxMFN: maxMFN) }
    public func domainName(_ domid: DomID) -> String? { inner.domainName(domid) }

    public func mapFrames(_ domid: DomID, _ mfns: UnsafeBufferPointer<UInt64>) throws(HostError) -> FrameMapping {
        let src: FrameMapping
        do {
            src = try inner.mapFrames(domid, mfns)
        } catch {
            meter.failedMapCalls += 1
            throw error
        }
        for m in mfns where seenSet.insert(m).inserted { seen.append(m) }
        return makeMapping(count: mfns.count, meter: meter) { i, dst in
            guard let p = src.page(i) else { return src.errors[i] }
            dst.copyMemory(from: p, byteCount: pageSize)
            for (off, v) in patches[mfns[i]] ?? [] { dst.storeBytes(of: v, toByteOffset: off, as: UInt64.self) }
            return 0
        }
    }
}

/// A correctly built simulated guest (Linux's layout, from a few input bytes), scanned
/// once clean, then changed by one typed fault or by raw word corruption and scanned again.
/// Input layout after the mode byte:
///   flags      bit0 32-bit, bits1-2 formats (0 both, 1 list only, 2 tree only, 3 both),
///              bit3 5-level paging
///   sizes      populated pages (u16 % 24577), extra unpopulated tail (u16 % 24577),
///              a second populated range (start u16, length u8*16), identity ranges
///              (count u8 % 3, then start u16, length u16 % 1024 each), p2m_vaddr choice
///              (u8 % 4 + u16, 2 MiB aligned), host slack (u8 * 64 frames)
///   options    batch (u8: 1 + v), generation retries (u8 % 4), map cells (u8 + 1)
///   action     u8 % 3: 0 clean only, 1 one `SimFault` (kind u8 + parameters),
///              2 corruption (count u8 % 8 + 1, then frame u16, word u16, value per patch)
public struct SimCase {
    public var spec: GuestSpec
    public var hostFrames: UInt64
    public var options: ScanOptions
    public var action: UInt8
    var reader: ByteReader

    public static let domid: DomID = 3

    public init(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        _ = r.u8()
        let flags = r.u8()
        let width: GuestWidth = flags & 1 == 1 ? .bits32 : .bits64
        let formats: PublishedFormats = [.both, .listOnly, .treeOnly, .both][Int((flags >> 1) & 3)]
        let populated = UInt64(r.u16() % 24577)
        let extra = UInt64(r.u16() % 24577)
        let maxPfn = populated + extra
        var ranges: [Range<UInt64>] = populated > 0 ? [0..<populated] : []
        let s2 = UInt64(r.u16()), l2 = UInt64(r.u8()) * 16
        if maxPfn > 0, l2 > 0 {
            let lo = max(populated, s2 % maxPfn), hi = min(maxPfn, lo + l2)
            if lo < hi { ranges.append(lo..<hi) }
        }
        var identity: [Range<UInt64>] = []
        for _ in 0..<Int(r.u8() % 3) {
            let st = UInt64(r.u16()), len = UInt64(r.u16() % 1024)
            if maxPfn > 0 {
                let lo = st % maxPfn, hi = min(maxPfn, lo + len)
                if lo < hi { identity.append(lo..<hi) }
            }
        }
        var spec = GuestSpec(domid: Self.domid, name: "fuzz", width: width, maxPfn: maxPfn, maxPages: maxPfn,
                             populated: ranges, identity: identity, formats: formats,
                             pagingLevels: flags & 8 != 0 ? 5 : 4)
        let vChoice = r.u8() % 4, vArg = UInt64(r.u16())
        // 2 MiB aligned, as Linux places the list (vm_area aligned to PMD_SIZE): the
        // simulator's builder only maps whole 2 MiB ranges from the list's start.
        switch (vChoice, width) {
        case (1, .bits64): spec.p2mVaddr = 0xffff_c900_0000_0000 &+ vArg << 21
        case (2, .bits64): spec.p2mVaddr = 0x0000_1000_0000_0000 &+ vArg << 21
        case (3, .bits64): spec.p2mVaddr = 0xffff_9000_0000_0000 &+ vArg << 21
        case (1, .bits32): spec.p2mVaddr = 0x4000_0000 &+ (vArg & 0x3ff) << 21
        case (3, .bits32): spec.p2mVaddr = 0x1000_0000 &+ (vArg & 0x3ff) << 21
        default: break
        }
        self.spec = spec
        let leaves = (maxPfn + UInt64(width.fpp) - 1) / UInt64(width.fpp)
        let populatedTotal = ranges.reduce(0) { $0 + UInt64($1.count) }
        hostFrames = max(16, populatedTotal + 4 * leaves + 1024 + UInt64(r.u8()) * 64)

        var o = ScanOptions()
        o.batchFrames = 1 + Int(r.u8())
        o.generationRetries = Int(r.u8() % 4)
        o.mapCells = 1 + Int(r.u8())
        // The operator configures the paging depth of 64-bit guests; a mismatch is a
        // configuration error, not a property of the guest under test.
        o.pagingLevels64 = spec.pagingLevels
        options = o
        action = r.u8() % 3
        reader = r
    }

    /// The typed fault chosen by the input, and whether the harness can insist on its
    /// finding (some parameters legitimately land where nothing is walked).
    mutating func fault() -> (SimFault, insist: Bool) {
        var r = reader
        defer { reader = r }
        let maxPfn = spec.maxPfn
        let fpp = UInt64(spec.width.fpp)
        let leaves = (maxPfn + fpp - 1) / fpp
        let pfn = maxPfn == 0 ? 0 : UInt64(r.u16()) % maxPfn
        let leaf = leaves == 0 ? 0 : Int(UInt64(r.u16()) % leaves)
        let aux = r.u8()
        switch r.u8() % 20 {
        case 0: return (.m2pMismatch(pfn: pfn), true)
        case 1: return (.duplicateMfn(pfn: pfn, sameAs: pfn == 0 ? 0 : pfn - 1 - UInt64(aux) % pfn), true)
        case 2: return (.mfnOutOfRange(pfn: pfn), true)
        case 3: return (.identityMismatch(pfn: pfn), true)
        case 4: return (.unmappableDataFrame(pfn: pfn), true)
        case 5: return (.treeListMismatch(pfn: pfn), true)
        case 6:
            let fllEntries = (leaves + fpp - 1) / fpp
            return (.zeroFllEntry(index: fllEntries == 0 ? 0 : Int(UInt64(aux) % fllEntries)), fllEntries > 0)
        case 7: return (.badPteFrame(leaf: leaf), true)
        case 8: return (.unmappableLeaf(leaf: leaf), true)
        case 9: return (.sharedLeaf(leaf: leaf, sameAs: leaf == 0 ? 0 : leaf - 1 - Int(aux) % leaf), true)
        case 10: return (.pageTableCycle(leaf: leaf), true)
        case 11: return (.pteNotPresent(leaf: leaf), true)
        case 12: return (.largePage(chunk: Int(aux)), true)
        case 13:
            // Only values that break Xen's rules whatever the layout.
            let v: UInt64
            switch (aux % 3, spec.width) {
            case (0, .bits64): v = 0xffff_8000_0000_0000
            case (0, .bits32): v = 0xf580_0000
            // A 32-bit guest's field is 4 bytes wide: "above 4 GiB" is unrepresentable,
            // the top page of the address space is not.
            case (1, .bits32): v = 0xffff_f000
            default: v = (spec.p2mVaddr ?? 0xc800_0000) | 0x123
            }
            return (.listVaddr(v), true)
        case 14:
            // The field is guest-width: a 32-bit guest can publish at most 2^32 - 1.
            return (.publishedMaxPfn((spec.width == .bits64 ? 1 << 52 : 0xffff_0000) + UInt64(aux)), true)
        case 15: return (.unpublished, true)
        case 16: return (.generationAlwaysMoving, true)
        case 17: return (.extraOwnedPages(1 + UInt64(aux)), true)
        case 18: return (.nrGpfns(maxPfn + 1 + UInt64(aux)), maxPfn > 0)
        default:
            if aux & 1 == 0 { return (.allMapsFail, true) }
            // Vanishing before the first map call always fails the scan; later, only if
            // the scan needs that many calls.
            let after = Int(aux >> 1) % 8
            return (.vanishAfterMapCalls(after), after == 0)
        }
    }

    /// Word patches over frames the clean scan mapped: (mfn, byte offset, value).
    mutating func patches(seen: [UInt64], maxMFN: UInt64) -> [(UInt64, Int, UInt64)] {
        guard !seen.isEmpty else { return [] }
        var r = reader
        defer { reader = r }
        let ctx = ValueContext(width: spec.width, maxMFN: maxMFN, dataBase: 1, frameMFNs: seen)
        var out: [(UInt64, Int, UInt64)] = []
        for _ in 0...Int(r.u8() % 8) {
            let mfn = seen[Int(r.u16()) % seen.count]
            let word = Int(r.u16() % 512)
            out.append((mfn, word * 8, ctx.value(&r)))
        }
        return out
    }
}

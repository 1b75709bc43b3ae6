#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import P2MEngine
import P2MTestSupport

/// A guest decoded straight from fuzz bytes: every word the walker can read (shared info,
/// fll/fl/leaf pages, page tables, M2P) is attacker-chosen. Input layout, in order:
///
///   flags      bit0 32-bit, bits1-2 type (0,1 pv, 2 hvm, 3 pvh), bit3 probe data frames,
///              bit4 5-level paging, bit5 unknown frames refuse to map (else read as
///              zero), bit6 nr_gpfns fails, bit7 shared-info page comes back short
///   options    bits0-5 batch-1, bits6-7 generation retries; then sample limit, map cells
///   host       max MFN (u16, at least 15), max_pages (u32), tot_pages before/after
///              (u32 each, masked to 20 bits), nr_gpfns (u32), data base MFN (u16),
///              vanish after N map calls (u8, 0 = never)
///   frames     N-1 (u8 % 24), then N MFNs (u16 % (max MFN + 2)), then per frame one
///              attribute byte (bit0 refuses to map, bits1-3 fill) with the fill's
///              parameters and up to 15 single-word writes (see `decodeFrame`)
///   shared     max_pfn, fll, p2m_cr3, p2m_vaddr (tag byte + payload each)
///   reads      R-1 (u8 % 6), then per read of the shared info: generation (u8) and a
///              change (u8: 0 none, 1 max_pfn+1, 2 fll -> another frame, 3 p2m_cr3 = 0)
///   m2p        count (u8 % 12), then (mfn u16, value) pairs
public final class RawGuestHost: P2MHost, @unchecked Sendable {
    public let backendName = "fuzz"
    public static let domid: DomID = 1

    public let width: GuestWidth
    public let type: DomainType
    public let options: ScanOptions
    public let maxMFNValue: UInt64
    public let maxPages: UInt64
    public let totPages: UInt64
    public let totPagesAfter: UInt64
    public let nrGpfnsValue: UInt64?
    public let unknownFramesRefuse: Bool
    public let shortSharedInfo: Bool
    public let vanishAfterMapCalls: Int
    /// Shared-info contents per read; reads past the end repeat the last.
    public let states: [ArchSharedInfo]
    public let meter = FrameMeter()

    var pages: [UInt64: UnsafeMutableRawPointer] = [:]
    var refused: Set<UInt64> = []
    let m2p: UnsafeMutableBufferPointer<UInt64>

    public init(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        _ = r.u8() // mode byte, read by FuzzHarness
        let flags = r.u8()
        width = flags & 1 == 1 ? .bits32 : .bits64
        switch (flags >> 1) & 3 {
        case 2: type = .hvm
        case 3: type = .pvh
        default: type = .pv
        }
        var o = ScanOptions()
        o.probeDataFrames = flags & 8 != 0
        o.pagingLevels64 = flags & 16 != 0 ? 5 : 4
        unknownFramesRefuse = flags & 32 != 0
        let nrFails = flags & 64 != 0
        shortSharedInfo = flags & 128 != 0
        let opt = r.u8()
        o.batchFrames = 1 + Int(opt & 63)
        o.generationRetries = Int(opt >> 6)
        o.sampleLimit = Int(r.u8() % 5)
        o.mapCells = 1 + Int(r.u8())
        options = o

        maxMFNValue = max(15, UInt64(r.u16()))
        maxPages = UInt64(r.u32() & 0xF_FFFF)
        totPages = UInt64(r.u32() & 0xF_FFFF)
        totPagesAfter = UInt64(r.u32() & 0xF_FFFF)
        let nr = UInt64(r.u32())
        nrGpfnsValue = nrFails ? nil : nr
        let dataBase = UInt64(r.u16()) % (maxMFNValue + 1)
        vanishAfterMapCalls = Int(r.u8())

        m2p = .allocate(capacity: Int(maxMFNValue) + 1)
        m2p.initialize(repeating: .max)

        let n = 1 + Int(r.u8() % 24)
        var mfns: [UInt64] = []
        for _ in 0..<n { mfns.append(UInt64(r.u16()) % (maxMFNValue + 2)) }
        let ctx = ValueContext(width: width, maxMFN: maxMFNValue, dataBase: dataBase, frameMFNs: mfns)
        for mfn in mfns {
            let page = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
            let refuse = Self.decodeFrame(&r, ctx, page, m2p: m2p)
            if let old = pages.updateValue(page, forKey: mfn) { old.deallocate() }
            if refuse { refused.insert(mfn) } else { refused.remove(mfn) }
        }

        var base = ArchSharedInfo(maxPfn: 0, frameListList: 0, p2mCr3: 0, p2mVaddr: 0, p2mGeneration: 0)
        let fpp = UInt64(width.fpp)
        switch r.u8() % 6 {
        case 0: base.maxPfn = UInt64(r.u16())
        case 1: base.maxPfn = fpp * UInt64(r.u8())
        case 2: base.maxPfn = UInt64(r.u32())
        case 3: base.maxPfn = 1 << 52
        case 4: base.maxPfn = r.u64()
        default: base.maxPfn = fpp * fpp * fpp + UInt64(r.u8())
        }
        switch r.u8() % 5 {
        case 0: base.frameListList = 0
        case 1: base.frameListList = .max
        case 2: base.frameListList = ctx.frame(r.u8())
        case 3: base.frameListList = r.u64()
        default: base.frameListList = 0xffff_ffff
        }
        switch r.u8() % 4 {
        case 0: base.p2mCr3 = 0
        case 1: base.p2mCr3 = CR3.fromMFN(ctx.frame(r.u8()), width: width)
        case 2: base.p2mCr3 = r.u64()
        default: base.p2mCr3 = CR3.fromMFN(UInt64(r.u16()), width: width)
        }
        let defaultVaddr: UInt64 = width == .bits32 ? 0xc800_0000 : (o.pagingLevels64 == 5 ? 0xffa0_0000_0000_0000 : 0xffff_c900_0000_0000)
        switch r.u8() % 6 {
        case 0: base.p2mVaddr = defaultVaddr
        case 1: base.p2mVaddr = defaultVaddr &+ UInt64(r.u16()) << pageShift
        case 2: base.p2mVaddr = 0
        case 3: base.p2mVaddr = 0xffff_ffff_ffff_f000
        case 4: base.p2mVaddr = r.u64()
        default: base.p2mVaddr = 0xffff_8000_0000_0000
        }
        // Width-truncate like a real shared-info page would, so the harness's view of
        // the published fields matches what the engine parses.
        let w = width
        func roundTrip(_ s: ArchSharedInfo) -> ArchSharedInfo {
            var page = [UInt8](repeating: 0, count: pageSize)
            s.write(into: &page, width: w)
            return ArchSharedInfo(page: page, width: w)!
        }
        var states: [ArchSharedInfo] = []
        let reads = 1 + Int(r.u8() % 6)
        var s = base
        for _ in 0..<reads {
            s.p2mGeneration = UInt64(r.u8())
            switch r.u8() % 4 {
            case 1: s.maxPfn &+= 1
            case 2: s.frameListList = ctx.frame(r.u8())
            case 3: s.p2mCr3 = 0
            default: break
            }
            states.append(roundTrip(s))
        }
        self.states = states

        for _ in 0..<Int(r.u8() % 12) {
            let mfn = Int(UInt64(r.u16()) % (maxMFNValue + 1))
            m2p[mfn] = ctx.value(&r)
        }
    }

    deinit {
        for p in pages.values { p.deallocate() }
        m2p.deallocate()
    }

    /// Fills one content frame from the input; returns whether it refuses to map.
    private static func decodeFrame(_ r: inout ByteReader, _ ctx: ValueContext, _ page: UnsafeMutableRawPointer,
                                    m2p: UnsafeMutableBufferPointer<UInt64>) -> Bool {
        let attr = r.u8()
        let width = ctx.width
        let fpp = width.fpp
        func put(_ i: Int, _ v: UInt64, bytes: Int) {
            if bytes == 4 {
                page.storeBytes(of: UInt32(truncatingIfNeeded: v), toByteOffset: i * 4, as: UInt32.self)
            } else {
                page.storeBytes(of: v, toByteOffset: i * 8, as: UInt64.self)
            }
        }
        page.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
        switch (attr >> 1) & 7 {
        case 0:
            break
        case 1:
            page.initializeMemory(as: UInt8.self, repeating: 0xff, count: pageSize)
        case 2:
            let v = ctx.value(&r)
            for i in 0..<fpp { put(i, v, bytes: width.bytes) }
        case 3:
            let v = ctx.value(&r)
            for i in 0..<512 { put(i, v, bytes: 8) }
        case 4:
            // An fll or frame-list page: entries naming frames j0, j0+1, ... then filler.
            let j0 = r.u8(), count = Int(r.u16()) % (fpp + 1), rest = ctx.value(&r)
            for i in 0..<fpp { put(i, i < count ? ctx.frame(j0 &+ UInt8(truncatingIfNeeded: i)) : rest, bytes: width.bytes) }
        case 5:
            // A page-table page: present PTEs naming frames j0, j0+1, ... then filler.
            let j0 = r.u8(), count = Int(r.u16()) % 513, rest = ctx.value(&r)
            for i in 0..<512 { put(i, i < count ? ctx.frame(j0 &+ UInt8(truncatingIfNeeded: i)) << pageShift | 0x63 : rest, bytes: 8) }
        case 6:
            // A consistent leaf for leaf index k: pfn k*fpp+i -> dataBase+k*fpp+i, M2P agreeing.
            let k = UInt64(r.u16()), count = Int(r.u16()) % (fpp + 1)
            for i in 0..<fpp {
                let pfn = k &* UInt64(fpp) &+ UInt64(i)
                if i < count {
                    let mfn = ctx.dataBase &+ pfn
                    put(i, mfn, bytes: width.bytes)
                    if mfn <= ctx.maxMFN { m2p[Int(mfn)] = pfn }
                } else {
                    put(i, .max, bytes: width.bytes)
                }
            }
        default:
            var g = SplitMix(seed: r.u64())
            for i in 0..<512 { put(i, g.next(), bytes: 8) }
        }
        for _ in 0..<Int(r.u8() % 16) {
            let idx = Int(r.u16())
            let v = ctx.value(&r)
            if idx & 0x8000 != 0 { put(idx & 511, v, bytes: 8) } else { put((idx & 0x7fff) % fpp, v, bytes: width.bytes) }
        }
        return attr & 1 == 1
    }

    // MARK: P2MHost

    public func listDomains() throws(HostError) -> [DomainInfo] { [try domainInfo(Self.domid)] }

    public func domainInfo(_ domid: DomID) throws(HostError) -> DomainInfo {
        guard domid == Self.domid else { throw HostError.domainNotFound(domid) }
        meter.domainInfoCalls += 1
        // The first call is the scan's own; later ones see a guest that ballooned.
        return DomainInfo(domid: domid, type: type, totPages: meter.domainInfoCalls == 1 ? totPages : totPagesAfter,
                          maxPages: maxPages, sharedInfoFrame: 0x51, uuid: Array(repeating: 0xab, count: 16))
    }

    public func guestWidth(_ domid: DomID) throws(HostError) -> GuestWidth { width }

    public func nrGpfns(_ domid: DomID) throws(HostError) -> UInt64 {
        guard let n = nrGpfnsValue else { throw HostError.system(operation: "xc_domain_nr_gpfns", errno: EPERM) }
        return n
    }

    public func maxMFN() throws(HostError) -> UInt64 { maxMFNValue }

    public func sharedInfoPage(_ domid: DomID, frame: UInt64) throws(HostError) -> [UInt8] {
        meter.sharedInfoReads += 1
        let s = states[min(meter.sharedInfoReads - 1, states.count - 1)]
        var page = [UInt8](repeating: 0, count: pageSize)
        s.write(into: &page, width: width)
        return shortSharedInfo ? Array(page.prefix(pageSize / 2)) : page
    }

    public func mapFrames(_ domid: DomID, _ mfns: UnsafeBufferPointer<UInt64>) throws(HostError) -> FrameMapping {
        if vanishAfterMapCalls > 0 && meter.mapCalls + 1 >= vanishAfterMapCalls {
            meter.failedMapCalls += 1
            throw HostError.domainNotFound(domid)
        }
        return makeMapping(count: mfns.count, meter: meter) { i, dst in
            let mfn = mfns[i]
            if refused.contains(mfn) { return EPERM }
            if let src = pages[mfn] {
                dst.copyMemory(from: src, byteCount: pageSize)
                return 0
            }
            if unknownFramesRefuse || mfn > maxMFNValue { return EFAULT }
            dst.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
            return 0
        }
    }

    public func mapM2P(maxMFN: UInt64) throws(HostError) -> M2PMapping {
        M2PMapping(entries: UnsafeBufferPointer(m2p)) { [self] in _ = self }
    }

    public func domainName(_ domid: DomID) -> String? { "fuzz" }
}

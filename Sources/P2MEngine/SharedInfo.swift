// struct arch_shared_info, parsed from a raw shared-info page without Xen headers.
// Offsets are pinned against xen/foreign/x86_{32,64}.h by static asserts in CXenCtrl.

public enum SharedInfoLayout {
    /// Byte offset of arch.max_pfn; the other fields follow in guest-width words:
    /// max_pfn, pfn_to_mfn_frame_list_list, nmi_reason, p2m_cr3, p2m_vaddr, p2m_generation.
    public static func archOffset(_ width: GuestWidth) -> Int {
        width == .bits64 ? 3088 : 2316
    }
}

/// The P2M-related words of a guest's shared info, widened to 64 bits.
/// A 32-bit guest's all-ones word widens to `UInt64.max` (INVALID), never to 0xffffffff.
public struct ArchSharedInfo: Equatable, Sendable, Codable {
    public var maxPfn: UInt64
    public var frameListList: UInt64
    public var nmiReason: UInt64
    public var p2mCr3: UInt64
    public var p2mVaddr: UInt64
    public var p2mGeneration: UInt64

    public init(maxPfn: UInt64, frameListList: UInt64, nmiReason: UInt64 = 0, p2mCr3: UInt64, p2mVaddr: UInt64, p2mGeneration: UInt64) {
        self.maxPfn = maxPfn
        self.frameListList = frameListList
        self.nmiReason = nmiReason
        self.p2mCr3 = p2mCr3
        self.p2mVaddr = p2mVaddr
        self.p2mGeneration = p2mGeneration
    }

    /// Parses the fields out of a 4096-byte page. Returns nil if the page is short.
    public init?(page: [UInt8], width: GuestWidth) {
        guard page.count >= pageSize else { return nil }
        let off = SharedInfoLayout.archOffset(width)
        func word(_ i: Int) -> UInt64 {
            var v: UInt64 = 0
            for b in 0..<width.bytes {
                v |= UInt64(page[off + i * width.bytes + b]) << (8 * UInt64(b))
            }
            return v
        }
        func mfnWord(_ i: Int) -> UInt64 {
            let v = word(i)
            return (width == .bits32 && v == 0xffff_ffff) ? UInt64.max : v
        }
        maxPfn = word(0)
        frameListList = mfnWord(1)
        nmiReason = word(2)
        p2mCr3 = word(3)
        p2mVaddr = word(4)
        p2mGeneration = word(5)
    }

    /// Writes the fields into a page (used by the simulator and test writers).
    public func write(into page: inout [UInt8], width: GuestWidth) {
        let off = SharedInfoLayout.archOffset(width)
        let values = [maxPfn, frameListList, nmiReason, p2mCr3, p2mVaddr, p2mGeneration]
        for (i, v) in values.enumerated() {
            var x = v
            if width == .bits32 { x = v == UInt64.max ? 0xffff_ffff : v & 0xffff_ffff }
            for b in 0..<width.bytes {
                page[off + i * width.bytes + b] = UInt8(truncatingIfNeeded: x >> (8 * UInt64(b)))
            }
        }
    }

    /// True when the fields that describe the P2M's location are equal (generation aside).
    func sameLayout(as other: ArchSharedInfo) -> Bool {
        maxPfn == other.maxPfn && frameListList == other.frameListList && p2mCr3 == other.p2mCr3
            && p2mVaddr == other.p2mVaddr
    }
}

/// Linux's P2M entry encoding (arch/x86/include/asm/xen/page.h), per guest width.
public enum P2MEntry {
    public static let invalid: UInt64 = .max

    public static func foreignBit(_ w: GuestWidth) -> UInt64 { 1 << UInt64(w.bits - 1) }
    public static func identityBit(_ w: GuestWidth) -> UInt64 { 1 << UInt64(w.bits - 2) }

    /// IDENTITY_FRAME(pfn) as the guest stores it.
    public static func identity(_ pfn: UInt64, _ w: GuestWidth) -> UInt64 { pfn | identityBit(w) }
    public static func foreign(_ mfn: UInt64, _ w: GuestWidth) -> UInt64 { mfn | foreignBit(w) }
}

/// Folded PAE cr3 (xen_pfn_to_cr3 / cr3_to_mfn for 32-bit guests).
public enum CR3 {
    public static func mfn(_ cr3: UInt64, width: GuestWidth) -> UInt64 {
        switch width {
        case .bits64: return cr3 >> pageShift
        case .bits32:
            let c = UInt32(truncatingIfNeeded: cr3)
            return UInt64((c >> 12) | (c << 20))
        }
    }

    public static func fromMFN(_ mfn: UInt64, width: GuestWidth) -> UInt64 {
        switch width {
        case .bits64: return mfn << pageShift
        case .bits32:
            let m = UInt32(truncatingIfNeeded: mfn)
            return UInt64((m << 12) | (m >> 20))
        }
    }
}

extension ArchSharedInfo {
    /// The domain's shared-info page from the host, decoded for its width; a page that
    /// cannot be one is the host's inconsistency, not an errno.
    public static func read(from host: any P2MHost, _ info: DomainInfo, _ width: GuestWidth) throws(HostError) -> ArchSharedInfo {
        let page = try host.sharedInfoPage(info.domid, frame: info.sharedInfoFrame)
        guard let si = ArchSharedInfo(page: page, width: width) else {
            throw HostError.inconsistent(operation: "read shared info of domain \(info.domid)",
                                         detail: "a \(page.count)-byte page is not a \(width.bits)-bit shared-info page")
        }
        return si
    }
}

import Foundation
import P2MEngine

/// Which P2M formats a simulated guest publishes.
public enum PublishedFormats: String, Codable, Sendable {
    /// Linux's default: the 3-level tree and the linear list.
    case both
    /// The toolstack asked for the linear list only (SIF_VIRT_P2M_4TOOLS): fll = ~0.
    case listOnly = "list_only"
    /// An old guest kernel that only knows the tree (p2m_cr3 = 0).
    case treeOnly = "tree_only"
}

/// What to build. Pfn ranges are half-open.
public struct GuestSpec: Sendable {
    public var domid: DomID
    public var name: String
    public var type: DomainType = .pv
    public var width: GuestWidth = .bits64
    /// Size of the P2M in pfns (what the guest publishes as max_pfn).
    public var maxPfn: UInt64
    /// The domain's maxmem in pages; defaults to maxPfn.
    public var maxPages: UInt64?
    public var populated: [Range<UInt64>]
    public var identity: [Range<UInt64>] = []
    public var formats: PublishedFormats = .both
    public var p2mVaddr: UInt64?
    /// Page-table levels for 64-bit guests (4, or 5 for LA57).
    public var pagingLevels: Int = 4
    public var uuid: [UInt8]?

    public init(domid: DomID, name: String, type: DomainType = .pv, width: GuestWidth = .bits64, maxPfn: UInt64,
                maxPages: UInt64? = nil, populated: [Range<UInt64>], identity: [Range<UInt64>] = [],
                formats: PublishedFormats = .both, p2mVaddr: UInt64? = nil, pagingLevels: Int = 4) {
        self.domid = domid
        self.name = name
        self.type = type
        self.width = width
        self.maxPfn = maxPfn
        self.maxPages = maxPages
        self.populated = populated
        self.identity = identity
        self.formats = formats
        self.p2mVaddr = p2mVaddr
        self.pagingLevels = pagingLevels
    }

    /// A guest with `memoryMiB` populated from pfn 0 and a P2M sized for `maxMiB`.
    public static func linux(domid: DomID, name: String, memoryMiB: UInt64, maxMiB: UInt64? = nil,
                             width: GuestWidth = .bits64, formats: PublishedFormats = .both) -> GuestSpec {
        let pages = memoryMiB << 8
        let maxPages = (maxMiB ?? memoryMiB) << 8
        return GuestSpec(domid: domid, name: name, width: width, maxPfn: max(pages, maxPages), maxPages: maxPages,
                         populated: pages > 0 ? [0..<pages] : [], formats: formats)
    }
}

/// Runtime faults that act on host calls rather than on guest memory.
struct RuntimeFaults {
    var generationAlwaysMoving = false
    var vanishAfterMapCalls: Int?
    var allMapsFail = false
}

/// A simulated domain and the bookkeeping needed to mutate its P2M like Linux does.
final class SimDomain {
    let domid: DomID
    let name: String
    let type: DomainType
    let width: GuestWidth
    let uuid: [UInt8]
    var maxPages: UInt64
    let sharedInfoFrame: UInt64
    var shared: ArchSharedInfo
    var nrGpfnsOverride: UInt64?
    var faults = RuntimeFaults()
    /// Frames owned beyond the populated pfns (models a tot_pages discrepancy).
    var extraOwnedPages: UInt64 = 0
    var populatedCount: UInt64 = 0
    /// P2M pages that had to come from outside the guest's pseudo-physical map (no
    /// reserved RAM and no free kernel page left): libxenguest refuses such a leaf.
    var structureFramesOutsideP2M = 0
    var dying = false
    var shutdown = false

    // Layout (PV only)
    var fpp: Int { width.fpp }
    var entryBytes: Int { width.bytes }
    var leafCount = 0
    /// Current leaf frame per leaf index, as the linear list maps it.
    var leafFrames: [UInt64] = []
    var missingLeaf: UInt64 = 0
    var identityLeaf: UInt64 = 0
    var midMissing: UInt64 = 0
    var missingPte: UInt64 = 0
    var identityPte: UInt64 = 0
    var fll: UInt64 = 0
    /// Mid (frame list) page per fll index, or midMissing.
    var mids: [UInt64] = []
    var hasTree = false
    var hasList = false
    var ptRoot: UInt64 = 0
    var ptLevels = 4
    var vaddr: UInt64 = 0
    var building = true
    /// Pfns set aside (during the build) for P2M pages, lowest last.
    var reserve: [UInt64] = []
    /// (pfn, mfn) of P2M pages whose own P2M entry is still to be written.
    var pending: [(UInt64, UInt64)] = []
    /// Populated pages free for the kernel's use, taken when the P2M grows.
    var kernelPool: [(pfn: UInt64, mfn: UInt64)] = []

    init(spec: GuestSpec, sharedInfoFrame: UInt64) {
        domid = spec.domid
        name = spec.name
        type = spec.type
        width = spec.width
        uuid = spec.uuid ?? SimDomain.uuid(for: spec.domid, name: spec.name)
        maxPages = spec.maxPages ?? spec.maxPfn
        self.sharedInfoFrame = sharedInfoFrame
        shared = ArchSharedInfo(maxPfn: 0, frameListList: 0, p2mCr3: 0, p2mVaddr: 0, p2mGeneration: 0)
    }

    static func uuid(for domid: DomID, name: String) -> [UInt8] {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in Array(name.utf8) + withUnsafeBytes(of: domid.littleEndian, Array.init) {
            h = (h ^ UInt64(b)) &* 0x100_0000_01b3
        }
        var out: [UInt8] = []
        for i in 0..<16 { out.append(UInt8(truncatingIfNeeded: (h &* UInt64(i + 1)) >> UInt64((i % 8) * 8))) }
        out[6] = (out[6] & 0x0f) | 0x40
        out[8] = (out[8] & 0x3f) | 0x80
        return out
    }

    var info: DomainInfo {
        DomainInfo(domid: domid, type: type, dying: dying, shutdown: shutdown, totPages: populatedCount + extraOwnedPages,
                   maxPages: maxPages, sharedInfoFrame: sharedInfoFrame, uuid: uuid)
    }
}

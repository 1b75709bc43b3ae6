import Foundation

/// Overall verdict of a report. Raw values are part of the JSON contract.
public enum Severity: String, Codable, Sendable, CaseIterable, Comparable {
    case ok
    case warning
    case critical
    case error
    case notApplicable = "not_applicable"

    /// Rank used to pick the worst of several verdicts (error outranks critical:
    /// nothing is known about a guest whose scan failed).
    public var rank: Int {
        switch self {
        case .notApplicable: return 0
        case .ok: return 1
        case .warning: return 2
        case .critical: return 3
        case .error: return 4
        }
    }

    public static func < (a: Severity, b: Severity) -> Bool { a.rank < b.rank }
}

/// Every kind of finding. Raw values are stable snake_case names (JSON contract);
/// the README documents each with what an operator should do.
public enum FindingKind: String, Codable, Sendable, CaseIterable {
    // Per-entry consistency
    case m2pMismatch = "m2p_mismatch"
    case duplicateMfn = "duplicate_mfn"
    case mfnOutOfRange = "mfn_out_of_range"
    case identityMismatch = "identity_mismatch"
    case frameUnmappable = "frame_unmappable"
    case treeListMismatch = "tree_list_mismatch"
    // Structure
    case structureMfnInvalid = "structure_mfn_invalid"
    case structureUnmappable = "structure_unmappable"
    case sharedFrameMisuse = "shared_frame_misuse"
    case structureCycle = "structure_cycle"
    case pteNotPresent = "pte_not_present"
    case largePageMapping = "large_page_mapping"
    case listVaddrInvalid = "list_vaddr_invalid"
    case treeCapacityExceeded = "tree_capacity_exceeded"
    case maxPfnImplausible = "max_pfn_implausible"
    case p2mFrameOutsidePhysmap = "p2m_frame_outside_physmap"
    // Whole guest
    case p2mNotPublished = "p2m_not_published"
    case p2mUnstable = "p2m_unstable"
    case populatedMismatch = "populated_mismatch"
    case maxPfnNrGpfnsMismatch = "max_pfn_nr_gpfns_mismatch"

    public var severity: Severity {
        switch self {
        case .p2mNotPublished, .p2mUnstable, .populatedMismatch, .maxPfnNrGpfnsMismatch, .largePageMapping, .treeCapacityExceeded:
            return .warning
        default:
            return .critical
        }
    }

    public var summary: String {
        switch self {
        case .m2pMismatch: return "populated pfn whose MFN maps back to a different pfn in Xen's M2P"
        case .duplicateMfn: return "MFN used by more than one pfn"
        case .mfnOutOfRange: return "entry names an MFN above the host's highest RAM page"
        case .identityMismatch: return "1:1 (identity) entry whose frame is not its own pfn"
        case .frameUnmappable: return "populated pfn whose frame this domain cannot map"
        case .treeListMismatch: return "3-level tree and linear list disagree for this pfn"
        case .structureMfnInvalid: return "zero or out-of-range MFN in fll, frame list or page-table entry"
        case .structureUnmappable: return "a frame of the P2M structure (fll, fl, page table or leaf) refused to map"
        case .sharedFrameMisuse: return "a P2M frame referenced more than once that is not one of Linux's shared missing/identity pages"
        case .structureCycle: return "the same frame used at two levels of the P2M structure (cycle or self-reference)"
        case .pteNotPresent: return "page-table entry inside the linear list's range is not present"
        case .largePageMapping: return "linear list mapped with 2 MiB/1 GiB pages: Xen's save/migrate tools only follow 4 KiB pages"
        case .listVaddrInvalid: return "p2m_vaddr range is non-canonical, misaligned, wraps, or touches Xen's hole"
        case .treeCapacityExceeded: return "max_pfn beyond what the 3-level tree can describe, yet the guest published a tree: only the linear list covers the whole P2M"
        case .maxPfnImplausible: return "published max_pfn far beyond what the domain could own; walk clamped"
        case .p2mFrameOutsidePhysmap: return "a P2M leaf frame the save path maps is outside the guest's pseudo-physical map (m2p[mfn] names no pfn whose entry is that frame): xl save/migrate fail with \"Bad mfn in p2m_frame_list[N]\""
        case .p2mNotPublished: return "guest has published neither a tree nor a linear list (early boot, or broken)"
        case .p2mUnstable: return "p2m_generation odd or moving across every retry: the guest was changing its P2M mapping"
        case .populatedMismatch: return "number of populated entries differs from the domain's tot_pages"
        case .maxPfnNrGpfnsMismatch: return "published max_pfn differs from Xen's nr_gpfns for the domain"
        }
    }
}

/// One concrete occurrence. Fields that do not apply to a kind are omitted from JSON.
public struct FindingSample: Codable, Sendable, Equatable {
    public var pfn: UInt64?
    public var mfn: UInt64?
    public var expected: UInt64?
    public var found: UInt64?
    public var level: Int?
    public var index: UInt64?
    public var format: P2MFormat?
    public var note: String?

    public init(pfn: UInt64? = nil, mfn: UInt64? = nil, expected: UInt64? = nil, found: UInt64? = nil,
                level: Int? = nil, index: UInt64? = nil, format: P2MFormat? = nil, note: String? = nil) {
        self.pfn = pfn
        self.mfn = mfn
        self.expected = expected
        self.found = found
        self.level = level
        self.index = index
        self.format = format
        self.note = note
    }
}

public struct Finding: Codable, Sendable, Equatable {
    public var kind: FindingKind
    public var severity: Severity
    public var count: UInt64
    public var summary: String
    public var samples: [FindingSample]
}

public enum P2MFormat: String, Codable, Sendable {
    case tree
    case linearList = "linear_list"
}

public struct FormatInfo: Codable, Sendable, Equatable {
    /// Whether the guest published this format at all.
    public var published: Bool
    /// Whether it was walked to the end without a structural finding.
    public var walked: Bool
    /// Levels of the structure above the leaves' entries (tree: 3; list: page-table levels).
    public var levels: Int
    /// fll MFN for the tree, p2m_cr3 root MFN for the list.
    public var root: UInt64?
    public var vaddr: UInt64?
    public var leafFrames: UInt64
    public var capacityPfns: UInt64?
}

public struct MaxPfnInfo: Codable, Sendable, Equatable {
    /// shared_info.arch.max_pfn as published (a count of pfns).
    public var published: UInt64
    /// After trimming trailing shared-missing ranges and clamping: what was checked.
    public var effective: UInt64
    public var nrGpfns: UInt64?
}

public struct EntryCounts: Codable, Sendable, Equatable {
    public var valid: UInt64 = 0
    public var invalid: UInt64 = 0
    public var identity: UInt64 = 0
    public var foreign: UInt64 = 0
    /// Entries that failed a check or could not be read at all.
    public var faulty: UInt64 = 0
    public init() {}
}

public enum MigrationVerdict: String, Codable, Sendable {
    case legacyOk = "legacy_ok"
    case needsMigrationV2 = "needs_migration_v2"
    case broken
    case notReady = "not_ready"
    case notApplicable = "not_applicable"
    case unknown
}

public struct MigrationReadiness: Codable, Sendable, Equatable {
    public var verdict: MigrationVerdict
    public var reason: String
}

public struct ScanStats: Codable, Sendable, Equatable {
    public var framesMapped: UInt64 = 0
    public var mapCalls: UInt64 = 0
    public var bytesRead: UInt64 = 0
    public var retries: Int = 0
    public var durationMs: Double = 0
    /// Incremental scans only: leaves found unchanged and clean whose remembered check
    /// stood in for the per-entry check (see poll.full_verify_seconds). Nil for a scan
    /// that checked every entry.
    public var leavesReused: UInt64?
    public init() {}
}

public struct GenerationInfo: Codable, Sendable, Equatable {
    public var before: UInt64
    public var after: UInt64
}

/// A coarse picture of the pfn space: each cell covers `pfnsPerCell` pfns and holds a
/// bit mask of the entry classes seen there (see `PfnMap.Bit`).
public struct PfnMap: Codable, Sendable, Equatable {
    public enum Bit {
        public static let valid: UInt8 = 1
        public static let invalid: UInt8 = 2
        public static let identity: UInt8 = 4
        public static let foreign: UInt8 = 8
        public static let faulty: UInt8 = 16
        public static let unreadable: UInt8 = 32
    }
    public var pfnsPerCell: UInt64
    /// Two hex digits per cell.
    public var cells: String

    public var masks: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(cells.utf8.count / 2)
        var it = cells.utf8.makeIterator()
        func nib(_ c: UInt8) -> UInt8 { c >= 97 ? c - 87 : c - 48 }
        while let h = it.next(), let l = it.next() { out.append(nib(h) << 4 | nib(l)) }
        return out
    }

    static func encode(_ masks: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(masks.count * 2)
        for m in masks {
            bytes.append(digits[Int(m >> 4)])
            bytes.append(digits[Int(m & 15)])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The typed result of one scan. `schema`, `domid`, `severity` and `findings` are the
/// stable contract; every field is documented in the README.
public struct P2MReport: Codable, Sendable, Equatable {
    public static let schemaVersion = 1

    public var schema: Int = P2MReport.schemaVersion
    public var domid: DomID
    public var name: String?
    public var uuid: String
    public var backend: String
    public var domainType: DomainType
    public var guestWidthBits: Int?
    public var severity: Severity
    public var error: String?
    public var primaryFormat: P2MFormat?
    public var tree: FormatInfo?
    public var linearList: FormatInfo?
    public var maxPfn: MaxPfnInfo?
    public var totPages: UInt64
    public var maxPages: UInt64
    public var populated: UInt64
    public var entries: EntryCounts
    public var generation: GenerationInfo?
    public var findings: [Finding]
    public var migration: MigrationReadiness
    public var stats: ScanStats
    public var pfnMap: PfnMap?
    public var scannedAt: Date
    /// What the host's toolstack will do with this guest (PV guests only).
    public var toolstack: ToolstackReport? = nil

    public func finding(_ kind: FindingKind) -> Finding? { findings.first { $0.kind == kind } }
    public func count(_ kind: FindingKind) -> UInt64 { finding(kind)?.count ?? 0 }

    /// JSON as served by the daemon and printed by `--json`.
    public static func encoder(pretty: Bool = true) -> JSONEncoder {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        return e
    }

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

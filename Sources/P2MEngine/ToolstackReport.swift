// The report's `toolstack` section: what libxenguest (xl save / xl migrate / xl dump-core)
// will do with this guest, predicted from the same checks libxenguest makes, with the
// messages it prints. See ToolstackModel.swift for how each prediction is derived.

/// An operation the host's toolstack offers for a PV guest. Raw values are JSON contract.
public enum ToolstackOperation: String, Codable, Sendable, CaseIterable {
    /// `xl save`: suspend, then one copy of every page (xc_domain_save, not live).
    case save
    /// `xl migrate`: live copy rounds, then suspend and a last round.
    case migrate
    /// `xl dump-core`: a live dump of the guest's pages (xc_domain_dumpcore).
    case dumpCore = "dump_core"
    /// The pre-4.6 (pre migration v2) save path, which only knows the 3-level tree.
    case treeOnlyToolstack = "tree_only_toolstack"

    public var command: String {
        switch self {
        case .save: return "xl save"
        case .migrate: return "xl migrate"
        case .dumpCore: return "xl dump-core"
        case .treeOnlyToolstack: return "xc_domain_save before Xen 4.6"
        }
    }
}

/// What the operation will do. Raw values are JSON contract.
public enum ToolstackOutcome: String, Codable, Sendable, CaseIterable, Comparable {
    /// libxenguest's checks pass and the copy is the guest's memory.
    case works
    /// Live migration aborts if the guest changes its P2M mapping meanwhile (generation moved).
    case abortsIfChanging = "aborts_if_changing"
    /// libxenguest's own checks pass, but xenp2m found the P2M inconsistent in a way the
    /// toolstack does not look at: the result is not trustworthy.
    case risky
    /// Succeeds, but frames are missing from the image (which pfns: `pfns`).
    case incomplete
    /// Succeeds, but some pfns are copied from a frame that is not theirs (`pfns`).
    case copiesWrongMemory = "copies_wrong_memory"
    /// The toolstack refuses, with `messages`.
    case fails

    var rank: Int {
        switch self {
        case .works: return 0
        case .abortsIfChanging: return 1
        case .risky: return 2
        case .incomplete: return 3
        case .copiesWrongMemory: return 4
        case .fails: return 5
        }
    }

    public static func < (a: ToolstackOutcome, b: ToolstackOutcome) -> Bool { a.rank < b.rank }

    /// `xenp2mctl preflight` exit status: 0 safe, 1 risky, 2 will fail or corrupt.
    public var exitStatus: Int32 {
        switch self {
        case .works: return 0
        case .abortsIfChanging, .risky, .incomplete: return 1
        case .copiesWrongMemory, .fails: return 2
        }
    }
}

public struct ToolstackPrediction: Codable, Sendable, Equatable {
    public var operation: ToolstackOperation
    public var command: String
    /// The P2M format the operation reads (libxenguest: the list whenever p2m_cr3 != 0).
    public var path: P2MFormat?
    public var pathReason: String
    public var outcome: ToolstackOutcome
    /// For `fails`: the lines libxenguest logs, each as printed after `xc: error: ` and
    /// before `: Internal error`, values filled in.
    public var messages: [String]
    /// Where the check lives in xen-project/xen (file:function).
    public var source: String?
    /// Affected pfns (the first ones, up to the report's sample limit).
    public var pfns: [UInt64]
    /// How many pfns are affected in total.
    public var pfnCount: UInt64
    public var detail: String

    public init(operation: ToolstackOperation, path: P2MFormat?, pathReason: String, outcome: ToolstackOutcome,
                messages: [String] = [], source: String? = nil, pfns: [UInt64] = [], pfnCount: UInt64 = 0, detail: String) {
        self.operation = operation
        self.command = operation.command
        self.path = path
        self.pathReason = pathReason
        self.outcome = outcome
        self.messages = messages
        self.source = source
        self.pfns = pfns
        self.pfnCount = pfnCount
        self.detail = detail
    }
}

public struct ToolstackReport: Codable, Sendable, Equatable {
    /// libxenguest releases whose source these predictions were derived from.
    public static let versions = "libxenguest 4.16 to 4.22 (checks and messages read in RELEASE-4.17.0 and RELEASE-4.20.0; unchanged up to 4.22.0)"

    public var libxenguest: String = ToolstackReport.versions
    public var predictions: [ToolstackPrediction]

    public init(predictions: [ToolstackPrediction]) { self.predictions = predictions }

    public func prediction(_ op: ToolstackOperation) -> ToolstackPrediction? { predictions.first { $0.operation == op } }

    /// Worst exit status over what this host's toolstack offers (the pre-4.6 line is
    /// information only).
    public var exitStatus: Int32 {
        predictions.filter { $0.operation != .treeOnlyToolstack }.map(\.outcome.exitStatus).max() ?? 0
    }
}

import P2MEngine

/// A Nagios/Icinga plugin state; the raw value is the plugin's exit status.
enum NagiosState: Int32, CaseIterable {
    case ok = 0
    case warning = 1
    case critical = 2
    case unknown = 3

    /// The state of a verdict: a failed scan is UNKNOWN (nothing is known about the guest).
    init(_ s: Severity) {
        switch s {
        case .ok, .notApplicable: self = .ok
        case .warning: self = .warning
        case .critical: self = .critical
        case .error: self = .unknown
        }
    }

    var name: String {
        switch self {
        case .ok: return "OK"
        case .warning: return "WARNING"
        case .critical: return "CRITICAL"
        case .unknown: return "UNKNOWN"
        }
    }

    /// Aggregation order: a critical guest must not hide behind an unknown one
    /// (CRITICAL > WARNING > UNKNOWN > OK).
    var rank: Int {
        switch self {
        case .ok: return 0
        case .unknown: return 1
        case .warning: return 2
        case .critical: return 3
        }
    }
}

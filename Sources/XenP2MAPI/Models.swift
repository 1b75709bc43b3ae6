import Foundation
import P2MEngine

/// Version of the socket API; the path prefix (`/v1/`) carries it too.
public let apiVersion = 1

/// Default socket of the system service (matches systemd/xenp2md.socket).
public let defaultSocketPath = "/run/xenp2m/xenp2md.sock"

/// JSON coders for every API body: the same conventions as `P2MReport` (snake_case keys,
/// ISO 8601 dates), so a client needs one decoder for reports and everything else.
public enum APIJSON {
    public static func encoder(pretty: Bool = false) -> JSONEncoder { P2MReport.encoder(pretty: pretty) }
    public static func decoder() -> JSONDecoder { P2MReport.decoder() }
}

/// Body of every non-2xx answer.
public struct APIError: Codable, Sendable, Equatable, Error {
    /// Stable machine-readable code: bad_request, not_found, method_not_allowed, forbidden,
    /// payload_too_large, header_fields_too_large, timeout, unavailable, internal.
    public var code: String
    public var message: String

    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }
}

/// Lifecycle state of a domain as Xen reports it.
public enum DomainState: String, Codable, Sendable {
    case running
    case paused
    case shutdown
    case dying
}

/// One row of `GET /v1/domains`: what `xenp2mctl list` and `check` need, without samples
/// or the pfn map.
public struct DomainSummary: Codable, Sendable, Equatable {
    public var domid: DomID
    public var name: String?
    public var uuid: String
    public var state: DomainState
    public var type: DomainType
    public var severity: Severity
    public var primaryFormat: P2MFormat?
    public var levels: Int?
    /// Effective max_pfn (what was checked).
    public var maxPfn: UInt64?
    public var publishedMaxPfn: UInt64?
    public var populated: UInt64
    /// Total findings over all kinds.
    public var findings: UInt64
    public var findingKinds: [String]
    public var migration: MigrationVerdict
    public var error: String?
    public var scannedAt: Date?
    public var scanDurationMs: Double?
    /// Why the domain was not scanned (dying or shut down), if it was skipped.
    public var skipped: String?

    public init(report r: P2MReport, state: DomainState, skipped: String? = nil) {
        domid = r.domid
        name = r.name
        uuid = r.uuid
        self.state = state
        type = r.domainType
        severity = r.severity
        primaryFormat = r.primaryFormat
        levels = (r.primaryFormat == .tree ? r.tree : r.linearList)?.levels
        maxPfn = r.maxPfn?.effective
        publishedMaxPfn = r.maxPfn?.published
        populated = r.populated
        findings = r.findings.reduce(0) { $0 &+ $1.count }
        findingKinds = r.findings.map(\.kind.rawValue)
        migration = r.migration.verdict
        error = r.error
        scannedAt = r.scannedAt
        scanDurationMs = r.stats.durationMs
        self.skipped = skipped
    }
}

/// What happened. Kinds that change what an operator should do are incidents and are
/// kept in the incident log across restarts; the others are only streamed.
public enum EventKind: String, Codable, Sendable, CaseIterable {
    case domainNew = "domain_new"
    case domainGone = "domain_gone"
    /// Same domid, different UUID: the old guest is gone and a new one took its id.
    case domainReused = "domain_reused"
    case severityChanged = "severity_changed"
    case formatChanged = "format_changed"
    case becameUnstable = "became_unstable"
    case becameStable = "became_stable"
    /// Dying or shut down: no longer scanned.
    case domainStopping = "domain_stopping"
    /// Populated pages changed (ballooning): streamed for `watch`, not an incident.
    case memoryChanged = "memory_changed"

    public var isIncident: Bool { self != .memoryChanged }
}

public struct DaemonEvent: Codable, Sendable, Equatable {
    /// Strictly increasing, also across restarts (continues from the incident log).
    public var seq: UInt64
    public var time: Date
    public var kind: EventKind
    public var domid: DomID
    public var name: String?
    public var uuid: String?
    /// Severity of the domain after the event.
    public var severity: Severity?
    public var previous: String?
    public var current: String?
    public var message: String

    public init(seq: UInt64, time: Date, kind: EventKind, domid: DomID, name: String?, uuid: String?,
                severity: Severity?, previous: String? = nil, current: String? = nil, message: String) {
        self.seq = seq
        self.time = time
        self.kind = kind
        self.domid = domid
        self.name = name
        self.uuid = uuid
        self.severity = severity
        self.previous = previous
        self.current = current
        self.message = message
    }
}

/// `GET /v1/health`.
public struct HealthStatus: Codable, Sendable, Equatable {
    /// "starting" until the first poll completed, then "ok".
    public var status: String
    public var pid: Int32
    public var backend: String
    public var uptimeSeconds: Double
    public var polls: UInt64
    public var lastPollAt: Date?
    public var lastPollDurationMs: Double?
    public var domains: Int
    public var worstSeverity: Severity?
    public var incidents: UInt64
    public var lastEventSeq: UInt64
    public var configFile: String?
    /// Increments on each successful reload.
    public var configGeneration: Int
    public var pollIntervalSeconds: Double
    public var concurrentScans: Int
    public var scanBudgetFramesPerSecond: Double
    /// Why the last reload was refused (the old config stays in force), or nil.
    public var configError: String?

    public init(status: String, pid: Int32, backend: String, uptimeSeconds: Double, polls: UInt64, lastPollAt: Date?,
                lastPollDurationMs: Double?, domains: Int, worstSeverity: Severity?, incidents: UInt64,
                lastEventSeq: UInt64, configFile: String?, configGeneration: Int, pollIntervalSeconds: Double,
                concurrentScans: Int, scanBudgetFramesPerSecond: Double, configError: String?) {
        self.status = status
        self.pid = pid
        self.backend = backend
        self.uptimeSeconds = uptimeSeconds
        self.polls = polls
        self.lastPollAt = lastPollAt
        self.lastPollDurationMs = lastPollDurationMs
        self.domains = domains
        self.worstSeverity = worstSeverity
        self.incidents = incidents
        self.lastEventSeq = lastEventSeq
        self.configFile = configFile
        self.configGeneration = configGeneration
        self.pollIntervalSeconds = pollIntervalSeconds
        self.concurrentScans = concurrentScans
        self.scanBudgetFramesPerSecond = scanBudgetFramesPerSecond
        self.configError = configError
    }
}

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
    /// Set while the daemon cannot list the host's domains: the row is the last known
    /// report, the domain may have changed or gone since. Says why and since when.
    public var stale: String?

    public init(report r: P2MReport, state: DomainState, skipped: String? = nil, stale: String? = nil) {
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
        self.stale = stale
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

/// Whether the daemon can list the host's domains (`GET /v1/health`, `domain_listing`).
public struct DomainListingHealth: Codable, Sendable, Equatable {
    /// False while the latest attempt failed.
    public var ok: Bool
    /// Failed polls in a row (0 when `ok`).
    public var consecutiveFailures: UInt64
    /// Failed listings since start.
    public var failures: UInt64
    /// The latest failure (kept after recovery, for the record).
    public var lastError: String?
    /// When the current run of failures began (nil when `ok`).
    public var failingSince: Date?
    public var lastSuccessAt: Date?

    public init(ok: Bool, consecutiveFailures: UInt64, failures: UInt64, lastError: String?, failingSince: Date?,
                lastSuccessAt: Date?) {
        self.ok = ok
        self.consecutiveFailures = consecutiveFailures
        self.failures = failures
        self.lastError = lastError
        self.failingSince = failingSince
        self.lastSuccessAt = lastSuccessAt
    }
}

/// Whether incidents reach the disk (`GET /v1/health`, `incident_log`).
public struct IncidentLogHealth: Codable, Sendable, Equatable {
    public var path: String
    /// False while appends fail (disk full, I/O error); the events are held in memory.
    public var writable: Bool
    /// The latest write error (kept after recovery, for the record).
    public var lastError: String?
    /// Incidents held in memory that are not on disk yet; they are written, in order, as
    /// soon as an append succeeds again (retried every poll). Lost if the daemon stops first.
    public var unpersistedEvents: Int
    /// Incidents given up on because too many were held (never written).
    public var droppedEvents: UInt64
    /// Failed appends since start.
    public var writeFailures: UInt64
    /// When the current run of failures began (nil when writable).
    public var failingSince: Date?

    public init(path: String, writable: Bool, lastError: String?, unpersistedEvents: Int, droppedEvents: UInt64,
                writeFailures: UInt64, failingSince: Date?) {
        self.path = path
        self.writable = writable
        self.lastError = lastError
        self.unpersistedEvents = unpersistedEvents
        self.droppedEvents = droppedEvents
        self.writeFailures = writeFailures
        self.failingSince = failingSince
    }
}

/// `GET /v1/health`.
public struct HealthStatus: Codable, Sendable, Equatable {
    /// "starting" until the first poll completed, then "ok", or "degraded" while the daemon
    /// runs but cannot do all of its job (domains cannot be listed, incidents cannot be
    /// written); `problems` says what.
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
    /// One line per reason for "degraded" (empty when "ok"). Optional for daemons older
    /// than these fields, as are the two below.
    public var problems: [String]?
    public var domainListing: DomainListingHealth?
    public var incidentLog: IncidentLogHealth?
    /// CPU seconds the daemon has spent inside its host backend's own calls, where the
    /// backend measures them (the simulator: its map calls), so a benchmark can tell
    /// xenp2m's cost from the simulated host's. Absent on real Xen.
    public var backendCpuSeconds: Double?

    public init(status: String, pid: Int32, backend: String, uptimeSeconds: Double, polls: UInt64, lastPollAt: Date?,
                lastPollDurationMs: Double?, domains: Int, worstSeverity: Severity?, incidents: UInt64,
                lastEventSeq: UInt64, configFile: String?, configGeneration: Int, pollIntervalSeconds: Double,
                concurrentScans: Int, scanBudgetFramesPerSecond: Double, configError: String?,
                problems: [String]? = nil, domainListing: DomainListingHealth? = nil, incidentLog: IncidentLogHealth? = nil,
                backendCpuSeconds: Double? = nil) {
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
        self.problems = problems
        self.domainListing = domainListing
        self.incidentLog = incidentLog
        self.backendCpuSeconds = backendCpuSeconds
    }
}

import Foundation
import P2MEngine
import Prometheus
import XenP2MAPI

// The daemon's Prometheus metrics, and the conventions every family here keeps (checked
// against a real exposition-format parser by scripts/prometheus_test.py):
//   - every family has `# HELP` and `# TYPE`: families are made on the registry directly,
//     never through swift-metrics (whose API carries no help text);
//   - per-domain series carry `domid`, `name` and `uuid`; daemon-wide series carry none;
//   - no host label: which host a series is from is the scraper's business (`instance` or
//     a target label), so one daemon binary is the same on every dom0;
//   - units in names, base units (`_seconds`), counters end in `_total`, `_info` families
//     are 1 for the labels that hold and 0 for the others (never absent while the domain is).
// A new per-domain family is one more entry in `DomainFamily.all`.

/// The daemon's metrics. Per-domain series are dropped when the domain goes, so a
/// destroyed guest does not linger as a stale series.
final class DaemonMetrics: @unchecked Sendable {
    let registry: PrometheusCollectorRegistry
    private let lock = NSLock()
    private var perDomain: [DomID: DomainSeries] = [:]
    /// The domain this daemon runs in, when the backend knows it: its series say so with
    /// `xenp2m_domain_info{calling_domain="true"}` (Xen will not map the caller's own P2M).
    var callingDomain: DomID? {
        get { lock.lock(); defer { lock.unlock() }; return _callingDomain }
        set { lock.lock(); defer { lock.unlock() }; _callingDomain = newValue }
    }
    private var _callingDomain: DomID?

    let scans: Prometheus.Counter
    let scanErrors: Prometheus.Counter
    let pollCycle: Prometheus.DurationHistogram
    let throttledScans: Prometheus.Counter
    let throttledSeconds: Prometheus.Counter
    let domains: Prometheus.Gauge
    let incidents: Prometheus.Gauge
    let up: Prometheus.Gauge
    let configReloads: Prometheus.Counter
    let configReloadFailures: Prometheus.Counter
    let listingFailures: Prometheus.Gauge
    let incidentLogUnpersisted: Prometheus.Gauge
    /// Connections answered 503 because `http.max_connections` were open.
    let connectionsRefused: Prometheus.Counter
    /// Event-stream requests answered 503 because `http.max_event_streams` were following.
    let eventStreamsRefused: Prometheus.Counter

    static let pollCycleBuckets: [Duration] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60].map { .milliseconds($0 * 1000) }

    init(registry g: PrometheusCollectorRegistry) {
        registry = g
        scans = g.makeCounter(descriptor: describe("xenp2m_scans_total", "Domain scans completed since start (any verdict)"))
        scanErrors = g.makeCounter(descriptor: describe("xenp2m_scan_errors_total", "Scans that ended in an error, and polls whose domain listing failed"))
        throttledScans = g.makeCounter(descriptor: describe("xenp2m_budget_throttled_scans_total", "Scans that waited for the frames-per-second budget"))
        throttledSeconds = g.makeCounter(descriptor: describe("xenp2m_budget_throttled_seconds_total", "Seconds scans waited for the frames-per-second budget since start"))
        pollCycle = g.makeDurationHistogram(descriptor: describe("xenp2m_poll_cycle_duration_seconds", "Duration of one poll of every domain"),
                                            buckets: Self.pollCycleBuckets)
        domains = g.makeGauge(descriptor: describe("xenp2m_domains", "Domains known to the daemon"))
        incidents = g.makeGauge(descriptor: describe("xenp2m_incidents", "Incidents in the incident log (this run and loaded at start)"))
        up = g.makeGauge(descriptor: describe("xenp2m_up", "1 once the first poll has completed"))
        configReloads = g.makeCounter(descriptor: describe("xenp2m_config_reloads_total", "Successful config reloads (SIGHUP)"))
        configReloadFailures = g.makeCounter(descriptor: describe("xenp2m_config_reload_failures_total", "Refused config reloads; the old config stayed in force"))
        listingFailures = g.makeGauge(descriptor: describe("xenp2m_domain_listing_failures", "Polls in a row whose domain listing failed (0: listing works); domain series are frozen meanwhile"))
        incidentLogUnpersisted = g.makeGauge(descriptor: describe("xenp2m_incident_log_unpersisted_events", "Incidents held in memory because appending them to the incident log failed"))
        let refused = describe("xenp2m_http_connections_refused_total",
                               "Connections and event-stream requests answered 503 because the limit named by `limit` was reached")
        connectionsRefused = g.makeCounter(descriptor: refused, labels: [("limit", "max_connections")])
        eventStreamsRefused = g.makeCounter(descriptor: refused, labels: [("limit", "max_event_streams")])
    }

    func text() -> String { registry.emitToString() }

    func update(_ r: P2MReport) {
        lock.lock(); defer { lock.unlock() }
        let id = DomainIdentity(domid: r.domid, name: r.name ?? "", uuid: r.uuid, type: r.domainType.rawValue,
                                calling: r.domid == _callingDomain)
        if let old = perDomain[r.domid], old.identity != id {
            old.unregister(registry)
            perDomain[r.domid] = nil
        }
        let s = perDomain[r.domid] ?? DomainSeries(registry: registry, identity: id)
        perDomain[r.domid] = s
        s.set(r)
    }

    func remove(_ domid: DomID) {
        lock.lock(); defer { lock.unlock() }
        perDomain.removeValue(forKey: domid)?.unregister(registry)
    }
}

/// What names a domain's series: a change of any of these replaces them (a renamed guest
/// or a reused domid must not keep the old guest's labels).
struct DomainIdentity: Equatable {
    var domid: DomID
    var name: String
    var uuid: String
    var type: String
    var calling: Bool

    var labels: [(String, String)] { [("domid", "\(domid)"), ("name", name), ("uuid", uuid)] }
}

/// One per-domain metric family: its name, help, extra label dimensions (one series per
/// combination of their values) and the value of each series for a report.
struct DomainFamily: Sendable {
    typealias Value = @Sendable (P2MReport, _ labels: [String: String]) -> Double

    let name: String
    let help: String
    let dimensions: [(label: String, values: [String])]
    let value: Value

    init(_ name: String, _ help: String, _ dimensions: [(label: String, values: [String])] = [], _ value: @escaping Value) {
        self.name = name
        self.help = help
        self.dimensions = dimensions
        self.value = value
    }

    /// Every combination of the dimensions' values (one empty combination without any).
    var combinations: [[(String, String)]] {
        dimensions.reduce([[]]) { acc, d in acc.flatMap { prefix in d.values.map { prefix + [(d.label, $0)] } } }
    }

    static func flag(_ b: Bool) -> Double { b ? 1 : 0 }

    static let formats = ["tree", "linear_list", "none"]
    static let verdicts: [MigrationVerdict] = [.legacyOk, .needsMigrationV2, .broken, .notReady, .notApplicable, .unknown]
    static let entryClasses = ["valid", "invalid", "identity", "foreign", "faulty"]

    static let all: [DomainFamily] = [
        DomainFamily("xenp2m_domain_severity_level",
                     "Verdict of the latest scan: 0 not_applicable, 1 ok, 2 warning, 3 critical, 4 error") { r, _ in
            Double(r.severity.rank)
        },
        DomainFamily("xenp2m_domain_p2m_entries", "P2M entries by class in the latest scan", [("class", entryClasses)]) { r, l in
            let e = r.entries
            switch l["class"] {
            case "valid": return Double(e.valid)
            case "invalid": return Double(e.invalid)
            case "identity": return Double(e.identity)
            case "foreign": return Double(e.foreign)
            default: return Double(e.faulty)
            }
        },
        DomainFamily("xenp2m_domain_findings", "Findings by kind in the latest scan",
                     [("kind", FindingKind.allCases.map(\.rawValue))]) { r, l in
            Double(r.count(FindingKind(rawValue: l["kind"]!)!))
        },
        DomainFamily("xenp2m_domain_p2m_format_info", "1 for the P2M format the scan relied on", [("format", formats)]) { r, l in
            flag(l["format"] == (r.primaryFormat?.rawValue ?? "none"))
        },
        DomainFamily("xenp2m_domain_p2m_levels", "Levels of the primary P2M structure") { r, _ in
            Double((r.primaryFormat == .tree ? r.tree : r.linearList)?.levels ?? 0)
        },
        DomainFamily("xenp2m_domain_max_pfn_published_pages", "max_pfn as published in shared info, in pages") { r, _ in
            Double(r.maxPfn?.published ?? 0)
        },
        DomainFamily("xenp2m_domain_max_pfn_effective_pages", "max_pfn actually checked after trimming and clamping, in pages") { r, _ in
            Double(r.maxPfn?.effective ?? 0)
        },
        DomainFamily("xenp2m_domain_p2m_generation", "p2m_generation read after the walk") { r, _ in
            Double(r.generation?.after ?? 0)
        },
        DomainFamily("xenp2m_domain_last_scan_timestamp_seconds", "Unix time of the latest scan") { r, _ in
            r.scannedAt.timeIntervalSince1970
        },
        DomainFamily("xenp2m_domain_scan_duration_seconds", "Duration of the latest scan") { r, _ in
            r.stats.durationMs / 1000
        },
        DomainFamily("xenp2m_domain_migration_ready",
                     "1 if save/migrate can copy this guest's P2M (legacy_ok or needs_migration_v2)") { r, _ in
            flag(r.migration.verdict == .legacyOk || r.migration.verdict == .needsMigrationV2)
        },
        DomainFamily("xenp2m_domain_migration_verdict_info", "1 for the current migration readiness verdict",
                     [("verdict", verdicts.map(\.rawValue))]) { r, l in
            flag(l["verdict"] == r.migration.verdict.rawValue)
        },
        DomainFamily("xenp2m_domain_populated_pages", "Populated P2M entries in the latest scan, in pages") { r, _ in
            Double(r.populated)
        },
        DomainFamily("xenp2m_domain_toolstack_outcome_level",
                     "What the toolstack would do per operation (xenp2mctl preflight's exit status): 0 works, 1 risky (aborts_if_changing, risky, incomplete), 2 fails or copies_wrong_memory, -1 no prediction",
                     [("operation", ToolstackOperation.allCases.map(\.rawValue))]) { r, l in
            Double(r.toolstack?.prediction(ToolstackOperation(rawValue: l["operation"]!)!)?.outcome.exitStatus ?? -1)
        },
    ]
}

/// Every series of one domain.
final class DomainSeries {
    let identity: DomainIdentity
    /// (family, its extra labels, the gauge)
    let series: [(DomainFamily, [String: String], Prometheus.Gauge)]
    /// Constant 1: the domain's identity and type, and whether it is the calling domain.
    let info: Prometheus.Gauge

    init(registry g: PrometheusCollectorRegistry, identity: DomainIdentity) {
        self.identity = identity
        let base = identity.labels
        var series: [(DomainFamily, [String: String], Prometheus.Gauge)] = []
        for f in DomainFamily.all {
            for extra in f.combinations {
                let gauge = g.makeGauge(descriptor: describe(f.name, f.help), labels: base + extra)
                series.append((f, Dictionary(uniqueKeysWithValues: extra), gauge))
            }
        }
        self.series = series
        info = g.makeGauge(descriptor: describe("xenp2m_domain_info",
                                                "1 for every domain: its type, and calling_domain=\"true\" for the domain xenp2md runs in"),
                           labels: base + [("type", identity.type), ("calling_domain", identity.calling ? "true" : "false")])
        info.set(to: 1)
    }

    func set(_ r: P2MReport) {
        for (f, labels, gauge) in series { gauge.set(to: f.value(r, labels)) }
    }

    func unregister(_ g: PrometheusCollectorRegistry) {
        for (_, _, gauge) in series { g.unregisterGauge(gauge) }
        g.unregisterGauge(info)
    }
}

/// A full metric name with its HELP text (the name is already complete, unit included).
func describe(_ name: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
}

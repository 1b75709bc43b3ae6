import Foundation
import Metrics
import P2MEngine
import Prometheus
import XenP2MAPI

/// The daemon's Prometheus metrics. Per-domain series are created with HELP text on the
/// registry directly (swift-metrics' API has no help) and dropped when the domain goes,
/// so a destroyed guest does not linger as a stale series. Daemon-wide counters go
/// through swift-metrics, bootstrapped onto the same registry.
final class DaemonMetrics: @unchecked Sendable {
    let registry: PrometheusCollectorRegistry
    private let lock = NSLock()
    private var perDomain: [DomID: DomainSeries] = [:]

    let scans: Metrics.Counter
    let scanErrors: Metrics.Counter
    let pollCycle: Metrics.Timer
    let throttledScans: Metrics.Counter
    let throttledSeconds: Prometheus.Gauge
    let domains: Prometheus.Gauge
    let incidents: Prometheus.Gauge
    let up: Prometheus.Gauge
    let configReloads: Prometheus.Counter
    let configReloadFailures: Prometheus.Counter
    let listingFailures: Prometheus.Gauge
    let incidentLogUnpersisted: Prometheus.Gauge

    /// - Parameter factory: the swift-metrics factory writing into `registry`. The
    ///   executable bootstraps `MetricsSystem` with it; tests and `--once` may not.
    init(registry: PrometheusCollectorRegistry, factory: MetricsFactory) {
        self.registry = registry
        scans = Metrics.Counter(label: "xenp2m_scans_total", dimensions: [], factory: factory)
        scanErrors = Metrics.Counter(label: "xenp2m_scan_errors_total", dimensions: [], factory: factory)
        throttledScans = Metrics.Counter(label: "xenp2m_budget_throttled_scans_total", dimensions: [], factory: factory)
        pollCycle = Metrics.Timer(label: "xenp2m_poll_cycle_duration_seconds", dimensions: [], preferredDisplayUnit: .seconds, factory: factory)
        throttledSeconds = registry.makeGauge(descriptor: describe("xenp2m_budget_throttled_seconds", "Seconds scans waited for the frames-per-second budget since start"))
        domains = registry.makeGauge(descriptor: describe("xenp2m_domains", "Domains known to the daemon"))
        incidents = registry.makeGauge(descriptor: describe("xenp2m_incidents", "Incidents in the incident log (this run and loaded at start)"))
        up = registry.makeGauge(descriptor: describe("xenp2m_up", "1 once the first poll has completed"))
        configReloads = registry.makeCounter(descriptor: describe("xenp2m_config_reloads_total", "Successful config reloads (SIGHUP)"))
        configReloadFailures = registry.makeCounter(descriptor: describe("xenp2m_config_reload_failures_total", "Refused config reloads; the old config stayed in force"))
        listingFailures = registry.makeGauge(descriptor: describe("xenp2m_domain_listing_failures", "Polls in a row whose domain listing failed (0: listing works); domain series are frozen meanwhile"))
        incidentLogUnpersisted = registry.makeGauge(descriptor: describe("xenp2m_incident_log_unpersisted_events", "Incidents held in memory because appending them to the incident log failed"))
    }

    func text() -> String { registry.emitToString() }

    func update(_ r: P2MReport) {
        lock.lock(); defer { lock.unlock() }
        let name = r.name ?? ""
        if let old = perDomain[r.domid], old.name != name {
            old.unregister(registry)
            perDomain[r.domid] = nil
        }
        let s = perDomain[r.domid] ?? DomainSeries(registry: registry, domid: r.domid, name: name)
        perDomain[r.domid] = s
        s.set(r)
    }

    func remove(_ domid: DomID) {
        lock.lock(); defer { lock.unlock() }
        perDomain.removeValue(forKey: domid)?.unregister(registry)
    }
}

/// Every series of one domain, labelled domid and name.
final class DomainSeries {
    let name: String
    let severity: Prometheus.Gauge
    let entries: [(String, Prometheus.Gauge)]
    let findings: [(FindingKind, Prometheus.Gauge)]
    let format: [(String, Prometheus.Gauge)]
    let levels: Prometheus.Gauge
    let maxPfnPublished: Prometheus.Gauge
    let maxPfnEffective: Prometheus.Gauge
    let generation: Prometheus.Gauge
    let lastScan: Prometheus.Gauge
    let scanDuration: Prometheus.Gauge
    let migrationReady: Prometheus.Gauge
    let migration: [(MigrationVerdict, Prometheus.Gauge)]
    let populated: Prometheus.Gauge

    static let formats = ["tree", "linear_list", "none"]
    static let verdicts: [MigrationVerdict] = [.legacyOk, .needsMigrationV2, .broken, .notReady, .notApplicable, .unknown]

    init(registry g: PrometheusCollectorRegistry, domid: DomID, name: String) {
        self.name = name
        let l = [("domid", "\(domid)"), ("name", name)]
        severity = g.makeGauge(descriptor: describe("xenp2m_domain_severity_level", "Verdict of the latest scan: 0 not_applicable, 1 ok, 2 warning, 3 critical, 4 error"), labels: l)
        entries = ["valid", "invalid", "identity", "foreign", "faulty"].map { c in
            (c, g.makeGauge(descriptor: describe("xenp2m_domain_p2m_entries", "P2M entries by class in the latest scan"), labels: l + [("class", c)]))
        }
        findings = FindingKind.allCases.map { k in
            (k, g.makeGauge(descriptor: describe("xenp2m_domain_findings", "Findings by kind in the latest scan"), labels: l + [("kind", k.rawValue)]))
        }
        format = Self.formats.map { f in
            (f, g.makeGauge(descriptor: describe("xenp2m_domain_p2m_format_info", "1 for the P2M format the scan relied on"), labels: l + [("format", f)]))
        }
        levels = g.makeGauge(descriptor: describe("xenp2m_domain_p2m_levels", "Levels of the primary P2M structure"), labels: l)
        maxPfnPublished = g.makeGauge(descriptor: describe("xenp2m_domain_max_pfn_published_pages", "max_pfn as published in shared info, in pages"), labels: l)
        maxPfnEffective = g.makeGauge(descriptor: describe("xenp2m_domain_max_pfn_effective_pages", "max_pfn actually checked after trimming and clamping, in pages"), labels: l)
        generation = g.makeGauge(descriptor: describe("xenp2m_domain_p2m_generation", "p2m_generation read after the walk"), labels: l)
        lastScan = g.makeGauge(descriptor: describe("xenp2m_domain_last_scan_timestamp_seconds", "Unix time of the latest scan"), labels: l)
        scanDuration = g.makeGauge(descriptor: describe("xenp2m_domain_scan_duration_seconds", "Duration of the latest scan"), labels: l)
        migrationReady = g.makeGauge(descriptor: describe("xenp2m_domain_migration_ready", "1 if save/migrate can copy this guest's P2M (legacy_ok or needs_migration_v2)"), labels: l)
        migration = Self.verdicts.map { v in
            (v, g.makeGauge(descriptor: describe("xenp2m_domain_migration_verdict_info", "1 for the current migration readiness verdict"), labels: l + [("verdict", v.rawValue)]))
        }
        populated = g.makeGauge(descriptor: describe("xenp2m_domain_populated_pages", "Populated P2M entries in the latest scan, in pages"), labels: l)
    }

    func set(_ r: P2MReport) {
        severity.set(to: Double(r.severity.rank))
        let e = r.entries
        for (c, gauge) in entries {
            switch c {
            case "valid": gauge.set(to: Double(e.valid))
            case "invalid": gauge.set(to: Double(e.invalid))
            case "identity": gauge.set(to: Double(e.identity))
            case "foreign": gauge.set(to: Double(e.foreign))
            default: gauge.set(to: Double(e.faulty))
            }
        }
        for (k, gauge) in findings { gauge.set(to: Double(r.count(k))) }
        let f = r.primaryFormat?.rawValue ?? "none"
        for (name, gauge) in format { gauge.set(to: name == f ? 1 : 0) }
        levels.set(to: Double((r.primaryFormat == .tree ? r.tree : r.linearList)?.levels ?? 0))
        maxPfnPublished.set(to: Double(r.maxPfn?.published ?? 0))
        maxPfnEffective.set(to: Double(r.maxPfn?.effective ?? 0))
        generation.set(to: Double(r.generation?.after ?? 0))
        lastScan.set(to: r.scannedAt.timeIntervalSince1970)
        scanDuration.set(to: r.stats.durationMs / 1000)
        migrationReady.set(to: r.migration.verdict == .legacyOk || r.migration.verdict == .needsMigrationV2 ? 1 : 0)
        for (v, gauge) in migration { gauge.set(to: v == r.migration.verdict ? 1 : 0) }
        populated.set(to: Double(r.populated))
    }

    func unregister(_ g: PrometheusCollectorRegistry) {
        var all = [severity, levels, maxPfnPublished, maxPfnEffective, generation, lastScan, scanDuration, migrationReady, populated]
        all += entries.map(\.1) + findings.map(\.1) + format.map(\.1) + migration.map(\.1)
        for x in all { g.unregisterGauge(x) }
    }
}

/// A full metric name with its HELP text (the name is already complete, unit included).
func describe(_ name: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
}

import Foundation
import Logging
import P2MEngine
import P2MSimulator
import Prometheus
import Testing
@testable import XenP2MDaemon

/// The per-domain series' identity: labels domid/name/uuid, replaced when any of them (or
/// the calling-domain mark) changes, removed with the domain. The exposition format itself
/// is checked against a real parser by scripts/prometheus_test.py.
@Suite struct DaemonMetricsTests {
    func setup(_ host: SimulatedHost) -> (Monitor, DaemonMetrics) {
        let metrics = DaemonMetrics(registry: PrometheusCollectorRegistry())
        var config = DaemonConfig()
        config.scanBudgetFramesPerSecond = 0
        let m = Monitor(host: host, settings: LiveSettings(config, group: nil), hub: EventHub(log: nil), metrics: metrics, logger: Logger(label: "test"))
        return (m, metrics)
    }

    /// Sample lines of one family, without HELP/TYPE.
    func samples(_ metrics: DaemonMetrics, _ family: String) -> [String] {
        metrics.text().split(separator: "\n").map(String.init).filter { $0.hasPrefix(family + "{") || $0.hasPrefix(family + " ") }
    }

    @Test func everyFamilyHasHelpAndType() async throws {
        let host = SimulatedHost(memoryGiB: 1)
        try host.createGuest(.linux(domid: 1, name: "one", memoryMiB: 32))
        let (m, metrics) = setup(host)
        await m.poll()
        let text = metrics.text()
        var names = Set<String>()
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            var name = String(line.prefix { $0 != "{" && $0 != " " })
            for suffix in ["_bucket", "_sum", "_count"] where name.hasPrefix("xenp2m_poll_cycle_duration_seconds") && name.hasSuffix(suffix) {
                name.removeLast(suffix.count)
            }
            names.insert(name)
        }
        #expect(names.count > 20)
        for n in names {
            #expect(text.contains("# HELP \(n) "), "no HELP for \(n)")
            #expect(text.contains("# TYPE \(n) "), "no TYPE for \(n)")
        }
    }

    @Test func seriesCarryDomidNameUUIDAndAreReplacedOnReuse() async throws {
        let host = SimulatedHost(memoryGiB: 1)
        try host.createGuest(.linux(domid: 3, name: "first", memoryMiB: 32))
        let (m, metrics) = setup(host)
        await m.poll()
        let firstUUID = try await m.report(3).uuid
        let first = samples(metrics, "xenp2m_domain_severity_level")
        #expect(first == ["xenp2m_domain_severity_level{domid=\"3\",name=\"first\",uuid=\"\(firstUUID)\"} 1.0"])
        #expect(samples(metrics, "xenp2m_domain_info") == [
            "xenp2m_domain_info{domid=\"3\",name=\"first\",uuid=\"\(firstUUID)\",type=\"pv\",calling_domain=\"false\"} 1.0",
        ])

        host.destroy(3)
        try host.createGuest(.linux(domid: 3, name: "second", memoryMiB: 64))
        await m.poll()
        let secondUUID = try await m.report(3).uuid
        #expect(secondUUID != firstUUID)
        let text = metrics.text()
        #expect(!text.contains(firstUUID), "the old guest's series linger")
        #expect(!text.contains("name=\"first\""))
        #expect(samples(metrics, "xenp2m_domain_populated_pages") == [
            "xenp2m_domain_populated_pages{domid=\"3\",name=\"second\",uuid=\"\(secondUUID)\"} \(Double(64 << 8))",
        ])

        host.destroy(3)
        await m.poll()
        #expect(!metrics.text().contains("domid=\"3\""))
    }

    /// Dom0Host (Dom0Tests.swift) marks domain 0 as the caller, as the Xen backend does.
    @Test func theCallingDomainIsMarked() async throws {
        let sim = SimulatedHost(memoryGiB: 1)
        try sim.createGuest(.linux(domid: 0, name: "Domain-0", memoryMiB: 64))
        try sim.createGuest(.linux(domid: 2, name: "guest", memoryMiB: 32))
        let metrics = DaemonMetrics(registry: PrometheusCollectorRegistry())
        var config = DaemonConfig()
        config.scanBudgetFramesPerSecond = 0
        let m = Monitor(host: Dom0Host(sim), settings: LiveSettings(config, group: nil), hub: EventHub(log: nil),
                        metrics: metrics, logger: Logger(label: "test"))
        await m.poll()
        let info = samples(metrics, "xenp2m_domain_info")
        #expect(info.count == 2)
        #expect(info.filter { $0.contains("calling_domain=\"true\"") }.map { $0.contains("domid=\"0\"") } == [true])
        // Reported as not applicable (its own P2M is out of reach), not as an error.
        #expect(samples(metrics, "xenp2m_domain_severity_level").contains { $0.contains("domid=\"0\"") && $0.hasSuffix(" 0.0") })
    }

    @Test func perDomainFamiliesExpandTheirDimensions() {
        let kinds = DomainFamily.all.first { $0.name == "xenp2m_domain_findings" }!
        #expect(kinds.combinations.count == FindingKind.allCases.count)
        let plain = DomainFamily.all.first { $0.name == "xenp2m_domain_severity_level" }!
        #expect(plain.combinations.count == 1 && plain.combinations[0].isEmpty)
        let two = DomainFamily("x", "y", [("a", ["1", "2"]), ("b", ["p", "q", "r"])]) { _, _ in 0 }
        #expect(two.combinations.count == 6)
        #expect(two.combinations.map { $0.map(\.1).joined() }.contains("2q"))
    }
}

import Foundation
import Logging
import P2MEngine
import P2MSimulator
import Prometheus
import Testing
import XenP2MAPI
@testable import XenP2MDaemon

/// The poll loop's domain lifecycle, driven in-process so the simulated host can be
/// changed between polls (the end-to-end tests cannot reach into the daemon's fleet).
@Suite struct LifecycleTests {
    func monitor(_ host: SimulatedHost) -> (Monitor, EventHub) {
        let registry = PrometheusCollectorRegistry()
        let metrics = DaemonMetrics(registry: registry)
        let hub = EventHub(log: nil)
        var config = DaemonConfig()
        config.scanBudgetFramesPerSecond = 0
        return (Monitor(host: host, settings: LiveSettings(config, group: nil), hub: hub, metrics: metrics, logger: Logger(label: "test")), hub)
    }

    func events(_ hub: EventHub) -> [DaemonEvent] { hub.subscribe(since: 0, follow: false).backlog }

    @Test func domidReuseIsNoticed() async throws {
        let host = SimulatedHost(memoryGiB: 1)
        try host.createGuest(.linux(domid: 3, name: "first", memoryMiB: 32))
        let (m, hub) = monitor(host)
        await m.poll()
        let firstUUID = try await m.report(3).uuid
        host.destroy(3)
        try host.createGuest(.linux(domid: 3, name: "second", memoryMiB: 64))
        await m.poll()
        let reused = try #require(events(hub).first { $0.kind == .domainReused })
        #expect(reused.domid == 3)
        #expect(reused.uuid != firstUUID)
        // The report served now is the new guest's, not the old one's.
        let now = try await m.report(3)
        #expect(now.name == "second" && now.uuid != firstUUID)
        #expect(now.totPages == 64 << 8)
    }

    @Test func dyingAndShutdownGuestsAreMarkedAndNotScanned() async throws {
        let host = SimulatedHost(memoryGiB: 1)
        try host.createGuest(.linux(domid: 4, name: "going", memoryMiB: 32))
        let (m, hub) = monitor(host)
        await m.poll()
        let scanned = try await m.report(4).scannedAt
        host.setState(4, shutdown: true)
        await m.poll()
        let stopping = try #require(events(hub).first { $0.kind == .domainStopping })
        #expect(stopping.domid == 4)
        #expect(try await m.report(4).scannedAt == scanned)
        let summary = try #require(await m.summaries().first { $0.domid == 4 })
        #expect(summary.state == .shutdown)
        #expect(summary.skipped != nil)
        host.destroy(4)
        await m.poll()
        #expect(events(hub).contains { $0.kind == .domainGone && $0.domid == 4 })
        #expect(await m.summaries().isEmpty)
    }
}

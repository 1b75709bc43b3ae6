import Foundation
import Logging
import P2MConfig
import P2MEngine
import P2MSimulator
import Prometheus
import Testing
import XenP2MAPI
@testable import XenP2MDaemon

/// poll.full_verify_seconds in the poll loop: the schedule it sets, and faults injected
/// between polls reported within the latency README "Detection latency" states.
@Suite struct IncrementalPollTests {
    func monitor(_ host: SimulatedHost, _ configure: (inout DaemonConfig) -> Void) -> Monitor {
        var config = DaemonConfig()
        config.scanBudgetFramesPerSecond = 0
        configure(&config)
        return Monitor(host: host, settings: LiveSettings(config, group: nil), hub: EventHub(log: nil),
                       metrics: DaemonMetrics(registry: PrometheusCollectorRegistry()), logger: Logger(label: "test"))
    }

    @Test func periodFollowsIntervalAndJitter() throws {
        let c = try DaemonConfig.parse("poll:\n  interval_seconds: 60\n  jitter_seconds: 0\n  full_verify_seconds: 600\n", file: "t.yaml")
        #expect(c.verifyPeriodPolls == 10)
        #expect(try DaemonConfig.parse("poll:\n  interval_seconds: 55\n  jitter_seconds: 5\n", file: "t.yaml").verifyPeriodPolls == 10)
        #expect(try DaemonConfig.parse("poll:\n  full_verify_seconds: 0\n", file: "t.yaml").verifyPeriodPolls == 1)
        #expect(try DaemonConfig.parse("poll:\n  interval_seconds: 60\n  full_verify_seconds: 30\n", file: "t.yaml").verifyPeriodPolls == 1)
        #expect(DaemonConfig().verifyPeriodPolls == 18, "defaults: 600 s over 30 s +- 3 s polls")
        #expect(throws: ConfigError.self) { try DaemonConfig.parse("poll:\n  full_verify_seconds: -1\n", file: "t.yaml") }
        #expect(Monitor.scanOptions(c).verifyPeriodScans == 10)
    }

    @Test func faultsBetweenPollsWithinLatency() async throws {
        let host = SimulatedHost(memoryGiB: 2, zeroCopy: true)
        try host.createGuest(.linux(domid: 5, name: "g", memoryMiB: 512))
        let m = monitor(host) {
            $0.pollIntervalSeconds = 60
            $0.pollJitterSeconds = 0
            $0.fullVerifySeconds = 180 // 3 polls
        }
        await m.poll()
        await m.poll()
        #expect(try await m.report(5).stats.leavesReused ?? 0 > 0)

        // A P2M change: the next poll.
        try host.inject(.mfnOutOfRange(pfn: 4000), into: 5)
        await m.poll()
        #expect(try await m.report(5).finding(.mfnOutOfRange) != nil)

        // The M2P alone: within 3 polls.
        try host.inject(.m2pMismatch(pfn: 70000), into: 5)
        var seenAt: Int?
        for k in 1...3 where seenAt == nil {
            await m.poll()
            if try await m.report(5).finding(.m2pMismatch) != nil { seenAt = k }
        }
        #expect(seenAt != nil, "m2p_mismatch not reported within 3 polls")
        // Asked for by name: every entry at once.
        let now = try await m.scanNow(5, timeout: 30)
        #expect(now.stats.leavesReused == 0 && now.finding(.m2pMismatch) != nil && now.finding(.mfnOutOfRange) != nil)
    }
}

import Foundation
import P2MEngine
import XenP2MAPI

// How the daemon reports on itself: GET /v1/health and systemd's STATUS= line.
extension Monitor {
    func health() -> HealthStatus {
        let up = ContinuousClock.now - startedAt
        let reports = records.values.compactMap(\.latest)
        let log = hub.persistence
        let config = settings.config
        var problems: [String] = []
        if let why = listing.problem { problems.append(why + "; the last known reports are kept and served as stale") }
        if let log, !log.writable {
            problems.append("incident log not writable (\(log.lastError ?? "unknown error")): \(log.unpersistedEvents) incidents held in memory only"
                + (log.droppedEvents > 0 ? ", \(log.droppedEvents) dropped" : ""))
        }
        if let why = hub.reservationProblem { problems.append(why) }
        return HealthStatus(
            status: polls == 0 ? "starting" : problems.isEmpty ? "ok" : "degraded", pid: getpid(), backend: host.backendName,
            uptimeSeconds: Double(up.components.seconds) + Double(up.components.attoseconds) / 1e18,
            polls: polls, lastPollAt: lastPollAt, lastPollDurationMs: lastPollDuration.map { $0 * 1000 },
            domains: records.count, worstSeverity: reports.map(\.severity).max(), incidents: hub.incidentCount,
            lastEventSeq: hub.lastSeq, configFile: settings.file, configGeneration: settings.generation,
            pollIntervalSeconds: config.pollIntervalSeconds, concurrentScans: config.concurrentScans,
            scanBudgetFramesPerSecond: config.scanBudgetFramesPerSecond, configError: settings.refusal,
            problems: problems, domainListing: listing.state, incidentLog: log, backendCpuSeconds: host.backendCPUSeconds)
    }

    /// One line for systemd's STATUS=.
    func statusLine() -> String {
        let reports = records.values.compactMap(\.latest)
        let worst = reports.max { $0.severity < $1.severity }
        var s = "\(records.count) domains"
        if let w = worst {
            s += ", worst \(w.severity.rawValue)"
            if w.severity > .ok { s += " (domain \(w.domid)\(w.name.map { " \($0)" } ?? ""))" }
        }
        s += ", \(polls) polls"
        if let d = lastPollDuration { s += ", last took \(String(format: "%.2f", d))s" }
        if !listing.state.ok { s += "; DEGRADED: cannot list domains (\(listing.state.lastError ?? "?"))" }
        if let log = hub.persistence, !log.writable { s += "; DEGRADED: incident log not writable, \(log.unpersistedEvents) held" }
        return s
    }
}

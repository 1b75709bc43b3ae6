import ArgumentParser
import P2MEngine
import XenP2MAPI

struct Check: DaemonCommand {
    static let configuration = CommandConfiguration(
        abstract: "Nagios/Icinga check: one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        discussion: "Without a domid the worst domain decides (CRITICAL > WARNING > UNKNOWN > OK).")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    @Argument(help: "Domain id (default: all domains).") var domid: UInt32?

    /// A plugin's answer is its output line and exit status, also when the daemon cannot
    /// be asked (UNKNOWN): never a `CLIError`.
    func emit(_ state: NagiosState, _ text: String) -> ExitCode {
        print("P2M \(state.name) - \(text)")
        return ExitCode(state.rawValue)
    }

    func run() throws {
        let r: HTTPResponse
        do {
            r = try connection.client.request("GET", domid.map { "/v1/domains/\($0)" } ?? "/v1/domains")
        } catch {
            throw emit(.unknown, "\(error)")
        }
        guard r.status == 200 else {
            throw emit(.unknown, r.apiError.map { "\($0.code): \($0.message)" } ?? "HTTP \(r.status) from xenp2md")
        }
        let decoder = APIJSON.decoder()
        if let domid {
            guard let rep = try? decoder.decode(P2MReport.self, from: r.body) else { throw emit(.unknown, "unreadable report for domain \(domid)") }
            let s = DomainSummary(report: rep, state: .running)
            let detail = rep.error ?? (s.findingKinds.isEmpty ? "no findings" : rep.findings.map { "\($0.kind.rawValue) x\($0.count)" }.joined(separator: ", "))
            throw emit(NagiosState(rep.severity), "domain \(domid)\(rep.name.map { " (\($0))" } ?? ""): \(rep.severity.rawValue), \(detail) | findings=\(s.findings)")
        }
        guard let all = try? decoder.decode([DomainSummary].self, from: r.body) else { throw emit(.unknown, "unreadable domain list") }
        let states = all.map { (NagiosState($0.severity), $0) }
        var worst = states.map(\.0).max { $0.rank < $1.rank } ?? .ok
        var counts: [NagiosState: Int] = [:]
        for (s, _) in states { counts[s, default: 0] += 1 }
        var text = "\(all.count) domains: \(counts[.critical] ?? 0) critical, \(counts[.warning] ?? 0) warning, \(counts[.unknown] ?? 0) unknown, \(counts[.ok] ?? 0) ok"
        let bad = states.filter { $0.0 == worst && worst != .ok }.map { "\($0.1.domid)" + ($0.1.name.map { " \($0)" } ?? "") }
        if !bad.isEmpty { text += "; \(worst.name.lowercased()): " + bad.joined(separator: ", ") }
        // The daemon cannot list the host's domains: these are last known states, so an
        // all-clear would be a guess. At least UNKNOWN; a known critical stays critical.
        if let why = all.lazy.compactMap(\.stale).first {
            if worst.rank < NagiosState.unknown.rank { worst = .unknown }
            text += "; stale: \(why)"
        }
        text += " | critical=\(counts[.critical] ?? 0) warning=\(counts[.warning] ?? 0) unknown=\(counts[.unknown] ?? 0) ok=\(counts[.ok] ?? 0)"
        throw emit(worst, text)
    }
}

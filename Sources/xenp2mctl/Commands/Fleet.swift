import ArgumentParser
import Foundation
import P2MEngine
import XenP2MAPI

/// `xenp2mctl fleet --prometheus URL`: the `list` table across every host one Prometheus
/// scrapes, worst first, from instant queries on its HTTP API (the PromQL is in the README,
/// "Monitoring many hosts"). It asks Prometheus, never a daemon: no --socket here.
struct Fleet: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Every guest on every host Prometheus scrapes, worst first; exit status like check.",
        discussion: """
            Host names come from each target's `host` label, else its `instance`. Exit status: \
            0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (a failed scan, a target that is down or \
            cannot list its domains, no targets, or Prometheus unreachable); the worst decides \
            as in `check` (CRITICAL > WARNING > UNKNOWN > OK).
            """)

    @Option(help: ArgumentHelp("Prometheus base URL (http only), e.g. http://prometheus:9090.", valueName: "url"))
    var prometheus: String
    @Option(help: "Scrape job of the xenp2md targets (the alert rules assume xenp2md).")
    var job = "xenp2md"
    @Flag(help: "Print the fleet as JSON (targets, guests, state, exit_status).") var json = false

    func run() throws {
        let api = try PrometheusAPI(url: prometheus)
        let view = try FleetView.load(from: api, job: job)
        if json {
            let e = JSONEncoder()
            e.keyEncodingStrategy = .convertToSnakeCase
            e.outputFormatting = [.prettyPrinted, .sortedKeys]
            writeOut((try? e.encode(view)) ?? Data())
        } else {
            print(view.rendered(), terminator: "")
        }
        if view.state != .ok { throw ExitCode(view.state.rawValue) }
    }
}

/// One guest as Prometheus last saw it.
struct FleetGuest: Encodable {
    var host: String
    var instance: String
    var domid: UInt32
    var name: String
    var uuid: String
    var severity: String
    var format: String?
    var migration: String?
    /// `xenp2m_domain_toolstack_outcome_level` per operation (save, migrate, dump_core):
    /// preflight's exit status, 0 safe, 1 risky, 2 fails or copies the wrong memory.
    var toolstack: [String: Int]
    var findings: [String]

    var parsedSeverity: Severity { Severity(rawValue: severity) ?? .error }

    /// The worst of the host's operations and which ones it hits: `safe`, `risky(migrate)`,
    /// `unsafe(save,migrate)` (fails or copies the wrong memory); nil without a prediction
    /// (not PV, scan failed). The pre-4.6 tree-only line is information only, as in
    /// preflight's exit status.
    var preflightLevel: Int? {
        Self.operations.compactMap { toolstack[$0] }.max()
    }
    var preflight: String? {
        guard let worst = preflightLevel else { return nil }
        if worst == 0 { return "safe" }
        let ops = Self.operations.filter { toolstack[$0] == worst }.joined(separator: ",")
        return "\(worst == 1 ? "risky" : "unsafe")(\(ops))"
    }
    static let operations = [ToolstackOperation.save, .migrate, .dumpCore].map(\.rawValue)

    enum CodingKeys: String, CodingKey {
        case host, instance, domid, name, uuid, severity, format, migration, toolstack, preflight, findings
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(host, forKey: .host)
        try c.encode(instance, forKey: .instance)
        try c.encode(domid, forKey: .domid)
        try c.encode(name, forKey: .name)
        try c.encode(uuid, forKey: .uuid)
        try c.encode(severity, forKey: .severity)
        try c.encodeIfPresent(format, forKey: .format)
        try c.encodeIfPresent(migration, forKey: .migration)
        try c.encode(toolstack, forKey: .toolstack)
        try c.encodeIfPresent(preflight, forKey: .preflight)
        try c.encode(findings, forKey: .findings)
    }
}

/// One scrape target of the job: down, or up but unable to list its domains, is UNKNOWN.
struct FleetTarget: Encodable {
    var host: String
    var instance: String
    var up: Bool
    /// Polls in a row whose domain listing failed (its guests are last known states).
    var listingFailures: Int
}

struct FleetView: Encodable {
    var prometheus: String
    var job: String
    var targets: [FleetTarget]
    var guests: [FleetGuest]
    var state: NagiosState
    var exitStatus: Int32 { state.rawValue }

    enum CodingKeys: String, CodingKey { case prometheus, job, targets, guests, state, exitStatus }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(prometheus, forKey: .prometheus)
        try c.encode(job, forKey: .job)
        try c.encode(targets, forKey: .targets)
        try c.encode(guests, forKey: .guests)
        try c.encode(state.name, forKey: .state)
        try c.encode(exitStatus, forKey: .exitStatus)
    }

    /// The queries behind the view. Series are joined on (instance, domid): one target is
    /// one daemon, and the host label is only for display.
    static func load(from api: PrometheusAPI, job: String) throws(CLIError) -> FleetView {
        let sel = "job=\"\(job.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\""))\""
        let severity = try api.query("xenp2m_domain_severity_level{\(sel)}")
        let formats = try api.query("xenp2m_domain_p2m_format_info{\(sel)} == 1")
        let verdicts = try api.query("xenp2m_domain_migration_verdict_info{\(sel)} == 1")
        let findings = try api.query("xenp2m_domain_findings{\(sel)} > 0")
        let outcomes = try api.query("xenp2m_domain_toolstack_outcome_level{\(sel)} >= 0")
        let up = try api.query("up{\(sel)}")
        let listing = try api.query("xenp2m_domain_listing_failures{\(sel)}")

        func key(_ m: [String: String]) -> String { "\(m["instance"] ?? "")|\(m["domid"] ?? "")" }
        func host(_ m: [String: String]) -> String { m["host"] ?? m["instance"] ?? "?" }
        var format: [String: String] = [:]
        for s in formats { format[key(s.metric)] = s.metric["format"] }
        var verdict: [String: String] = [:]
        for s in verdicts { verdict[key(s.metric)] = s.metric["verdict"] }
        var kinds: [String: [String]] = [:]
        for s in findings { if let k = s.metric["kind"] { kinds[key(s.metric), default: []].append(k) } }
        var toolstack: [String: [String: Int]] = [:]
        for s in outcomes { if let op = s.metric["operation"] { toolstack[key(s.metric), default: [:]][op] = Int(s.value) } }

        var guests: [FleetGuest] = severity.compactMap { s in
            guard let d = s.metric["domid"].flatMap({ UInt32($0) }) else { return nil }
            let sev = Severity.allCases.first { Double($0.rank) == s.value } ?? .error
            return FleetGuest(host: host(s.metric), instance: s.metric["instance"] ?? "", domid: d, name: s.metric["name"] ?? "",
                              uuid: s.metric["uuid"] ?? "", severity: sev.rawValue, format: format[key(s.metric)],
                              migration: verdict[key(s.metric)], toolstack: toolstack[key(s.metric)] ?? [:],
                              findings: (kinds[key(s.metric)] ?? []).sorted())
        }
        guests.sort(by: worstFirst)

        var failures: [String: Int] = [:]
        for s in listing { failures[s.metric["instance"] ?? ""] = Int(s.value) }
        let targets = up.map { s in
            FleetTarget(host: host(s.metric), instance: s.metric["instance"] ?? "", up: s.value == 1,
                        listingFailures: failures[s.metric["instance"] ?? ""] ?? 0)
        }.sorted { ($0.host, $0.instance) < ($1.host, $1.instance) }

        var state = guests.map { NagiosState($0.parsedSeverity) }.max { $0.rank < $1.rank } ?? .ok
        // A host that cannot be asked is unknown, not fine; a known critical stays critical.
        if targets.isEmpty || targets.contains(where: { !$0.up || $0.listingFailures > 0 }), state.rank < NagiosState.unknown.rank {
            state = .unknown
        }
        return FleetView(prometheus: api.base, job: job, targets: targets, guests: guests, state: state)
    }

    /// CRITICAL, WARNING, UNKNOWN (scan errors), OK, then not applicable; within one, the
    /// worse toolstack prediction first; then by host and domid.
    static func worstFirst(_ a: FleetGuest, _ b: FleetGuest) -> Bool {
        let (na, nb) = (NagiosState(a.parsedSeverity).rank, NagiosState(b.parsedSeverity).rank)
        if na != nb { return na > nb }
        if a.parsedSeverity != b.parsedSeverity { return a.parsedSeverity > b.parsedSeverity }
        let (pa, pb) = (a.preflightLevel ?? -1, b.preflightLevel ?? -1)
        if pa != pb { return pa > pb }
        return (a.host, a.domid) < (b.host, b.domid)
    }

    func rendered() -> String {
        let rows = guests.map { g in
            [g.host, "\(g.domid)", g.name.isEmpty ? "-" : g.name, g.severity, g.format.flatMap { $0 == "none" ? nil : $0 } ?? "-", g.migration ?? "-",
             g.preflight ?? "-", g.findings.isEmpty ? "-" : g.findings.joined(separator: ",")]
        }
        var out = Render.table(["HOST", "DOMID", "NAME", "SEVERITY", "FORMAT", "MIGRATION", "PREFLIGHT", "FINDINGS"], rows)
        for t in targets where !t.up {
            out += "DOWN: \(t.host) (\(t.instance)): Prometheus cannot scrape it; its guests are not listed\n"
        }
        for t in targets where t.up && t.listingFailures > 0 {
            out += "STALE: \(t.host) (\(t.instance)): cannot list its domains (\(t.listingFailures) polls); rows are last known\n"
        }
        if targets.isEmpty { out += "no targets of job \"\(job)\" in Prometheus at \(prometheus)\n" }
        let counts = Dictionary(grouping: guests) { NagiosState($0.parsedSeverity) }.mapValues(\.count)
        out += "P2M \(state.name) - \(targets.count) hosts (\(targets.filter { !$0.up }.count) down), \(guests.count) guests: "
            + "\(counts[.critical] ?? 0) critical, \(counts[.warning] ?? 0) warning, \(counts[.unknown] ?? 0) unknown, \(counts[.ok] ?? 0) ok\n"
        return out
    }
}

/// Instant queries on Prometheus's HTTP API (GET /api/v1/query).
struct PrometheusAPI {
    let base: String
    let client: TCPHTTPClient
    let pathPrefix: String

    init(url: String) throws(CLIError) {
        guard let u = URLComponents(string: url), let scheme = u.scheme?.lowercased(), let host = u.host, !host.isEmpty else {
            throw CLIError("--prometheus \(url): not a URL (expected http://HOST:PORT)", code: NagiosState.unknown.rawValue)
        }
        guard scheme == "http" else {
            throw CLIError("--prometheus \(url): only http is supported (no TLS in xenp2mctl); use a local or proxied http endpoint",
                           code: NagiosState.unknown.rawValue)
        }
        let port = u.port ?? 80
        guard (1...65535).contains(port) else { throw CLIError("--prometheus \(url): bad port", code: NagiosState.unknown.rawValue) }
        base = url
        client = TCPHTTPClient(host: host, port: UInt16(port))
        pathPrefix = u.path.hasSuffix("/") ? String(u.path.dropLast()) : u.path
    }

    struct Sample {
        var metric: [String: String]
        var value: Double
    }

    private struct Answer: Decodable {
        var status: String
        var error: String?
        var errorType: String?
        var data: DataPart?
        struct DataPart: Decodable {
            var resultType: String
            var result: [Series]
        }
        struct Series: Decodable {
            var metric: [String: String]
            var value: Point
        }
        /// `[unix_time, "value"]`
        struct Point: Decodable {
            var value: Double
            init(from decoder: Decoder) throws {
                var c = try decoder.unkeyedContainer()
                _ = try c.decode(Double.self)
                let text = try c.decode(String.self)
                guard let v = Double(text) ?? (text == "NaN" ? .nan : nil) else {
                    throw DecodingError.dataCorruptedError(in: c, debugDescription: "value \(text)")
                }
                value = v
            }
        }
    }

    /// One instant vector query; any failure is UNKNOWN with Prometheus's own words.
    func query(_ promql: String) throws(CLIError) -> [Sample] {
        var q = URLComponents()
        q.queryItems = [URLQueryItem(name: "query", value: promql)]
        // URLComponents leaves '+' alone in a query, and a server reads it as a space.
        let encoded = (q.percentEncodedQuery ?? "").replacingOccurrences(of: "+", with: "%2B")
        let r: HTTPResponse
        do {
            r = try client.get("\(pathPrefix)/api/v1/query?\(encoded)")
        } catch {
            throw CLIError("Prometheus at \(base): \(error)", code: NagiosState.unknown.rawValue)
        }
        guard let a = try? JSONDecoder().decode(Answer.self, from: r.body) else {
            throw CLIError("Prometheus at \(base): HTTP \(r.status), not a Prometheus API answer (is this the right URL?)",
                           code: NagiosState.unknown.rawValue)
        }
        guard a.status == "success", let data = a.data else {
            throw CLIError("Prometheus at \(base) refused \(promql): \(a.errorType ?? "error"): \(a.error ?? "HTTP \(r.status)")",
                           code: NagiosState.unknown.rawValue)
        }
        guard data.resultType == "vector" else {
            throw CLIError("Prometheus at \(base): \(promql) gave a \(data.resultType), not a vector", code: NagiosState.unknown.rawValue)
        }
        return data.result.map { Sample(metric: $0.metric, value: $0.value.value) }
    }
}

import ArgumentParser
import Foundation
import P2MDumpCore
import P2MEngine
import XenP2MAPI

/// Options every subcommand shares.
struct Connection: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Socket of xenp2md (default: $XENP2M_SOCKET or \(defaultSocketPath)).", valueName: "path"),
            completion: .file())
    var socket: String?

    var path: String {
        socket ?? ProcessInfo.processInfo.environment["XENP2M_SOCKET"].flatMap { $0.isEmpty ? nil : $0 } ?? defaultSocketPath
    }

    var client: UnixHTTPClient { UnixHTTPClient(socketPath: path) }
}

/// A failure already explained on stderr; carries the exit status.
struct Failure: Error {
    var code: Int32
}

func fail(_ message: String, code: Int32 = 1) -> Failure {
    FileHandle.standardError.write(Data("xenp2mctl: \(message)\n".utf8))
    return Failure(code: code)
}

/// GET/POST that must answer 2xx; anything else becomes a one-line error.
func call(_ c: Connection, _ method: String, _ path: String, failCode: Int32 = 1) throws -> HTTPResponse {
    let r: HTTPResponse
    do {
        r = try c.client.request(method, path)
    } catch {
        throw fail("\(error)", code: failCode)
    }
    guard (200..<300).contains(r.status) else {
        if let e = r.apiError { throw fail("\(e.code): \(e.message)", code: failCode) }
        throw fail("HTTP \(r.status) from xenp2md", code: failCode)
    }
    return r
}

func decode<T: Decodable>(_ type: T.Type, _ r: HTTPResponse, failCode: Int32 = 1) throws -> T {
    do {
        return try APIJSON.decoder().decode(type, from: r.body)
    } catch {
        throw fail("cannot read the daemon's answer: \(error)", code: failCode)
    }
}

func writeOut(_ data: Data) {
    FileHandle.standardOutput.write(data)
    if data.last != 10 { FileHandle.standardOutput.write(Data("\n".utf8)) }
}

/// Runs a subcommand body, turning `Failure` into its exit status.
func guarded(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let f as Failure {
        throw ExitCode(f.code)
    }
}

@main
struct XenP2Mctl: ParsableCommand {
    /// `xenp2mctl --socket PATH <command>`: the socket may come before the subcommand too.
    @OptionGroup var connection: Connection

    static let configuration = CommandConfiguration(
        commandName: "xenp2mctl",
        abstract: "Ask xenp2md about the P2M of Xen PV guests.",
        discussion: "Shell completions: xenp2mctl --generate-completion-script bash|zsh|fish",
        subcommands: [Status.self, List.self, Scan.self, Watch.self, Metrics.self, Map.self, Check.self, CheckCore.self])
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Latest report of one domain.")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    var connection: Connection { local.socket == nil ? root.connection : local }
    @Argument(help: "Domain id.") var domid: UInt32
    @Flag(help: "Print the report JSON exactly as the daemon serves it.") var json = false

    func run() throws {
        try guarded {
            let r = try call(connection, "GET", "/v1/domains/\(domid)")
            if json {
                writeOut(r.body)
            } else {
                print(Render.status(try decode(P2MReport.self, r)), terminator: "")
            }
        }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "All domains: severity, format, levels, max_pfn, findings.")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    var connection: Connection { local.socket == nil ? root.connection : local }
    @Flag(help: "Print the JSON array of summaries.") var json = false

    func run() throws {
        try guarded {
            let r = try call(connection, "GET", "/v1/domains")
            if json {
                writeOut(r.body)
            } else {
                print(Render.summaries(try decode([DomainSummary].self, r)), terminator: "")
            }
        }
    }
}

struct Scan: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Scan a domain now and show the new report (root or the socket's group).")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    var connection: Connection { local.socket == nil ? root.connection : local }
    @Argument(help: "Domain id.") var domid: UInt32
    @Option(help: "Seconds to wait for the scan.") var timeout: Double?
    @Flag(help: "Print the report JSON.") var json = false

    func run() throws {
        try guarded {
            var path = "/v1/domains/\(domid)/scan"
            if let timeout { path += "?timeout=\(timeout)" }
            let r = try call(connection, "POST", path)
            if json {
                writeOut(r.body)
            } else {
                print(Render.status(try decode(P2MReport.self, r)), terminator: "")
            }
        }
    }
}

struct Watch: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Follow events (state changes) as they happen.")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    var connection: Connection { local.socket == nil ? root.connection : local }
    @Option(help: "Also show kept events after this sequence number (0: all kept, including the incident log).")
    var since: UInt64?
    @Option(help: "Stop after this many events.") var count: Int?
    @Flag(name: .customLong("no-follow"), help: "Print the kept events and exit.") var noFollow = false
    @Flag(help: "One JSON event per line.") var json = false

    func run() throws {
        try guarded {
            var q: [String] = []
            if let since { q.append("since=\(since)") }
            if noFollow { q.append("follow=0") }
            let path = "/v1/events" + (q.isEmpty ? "" : "?" + q.joined(separator: "&"))
            var seen = 0
            var body: [String] = []
            let decoder = APIJSON.decoder()
            let fmt = ISO8601DateFormatter()
            let status: Int
            do {
                status = try connection.client.stream("GET", path) { line in
                    guard !line.isEmpty else { return true }
                    body.append(line)
                    guard let e = try? decoder.decode(DaemonEvent.self, from: Data(line.utf8)) else { return true }
                    // Unbuffered: watch output is often piped and must appear as it happens.
                    let text = json ? line : "\(fmt.string(from: e.time))  #\(e.seq)  \(e.kind.rawValue.padding(toLength: 16, withPad: " ", startingAt: 0))  \(e.message)"
                    FileHandle.standardOutput.write(Data((text + "\n").utf8))
                    seen += 1
                    return count.map { seen < $0 } ?? true
                }
            } catch {
                throw fail("\(error)")
            }
            if !(200..<300).contains(status) {
                let e = body.joined().data(using: .utf8).flatMap { try? decoder.decode(APIError.self, from: $0) }
                throw fail(e.map { "\($0.code): \($0.message)" } ?? "HTTP \(status) from xenp2md")
            }
        }
    }
}

struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The Prometheus metrics text.")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    var connection: Connection { local.socket == nil ? root.connection : local }

    func run() throws {
        try guarded { writeOut(try call(connection, "GET", "/metrics").body) }
    }
}

struct Map: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A picture of a domain's pfn space: where its P2M is valid, invalid, 1:1, foreign or broken.")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    var connection: Connection { local.socket == nil ? root.connection : local }
    @Argument(help: "Domain id.") var domid: UInt32
    @Option(help: "Cells per row.") var width = 64

    func run() throws {
        try guarded {
            let r = try call(connection, "GET", "/v1/domains/\(domid)")
            print(Render.map(try decode(P2MReport.self, r), width: width), terminator: "")
        }
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Nagios/Icinga check: one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        discussion: "Without a domid the worst domain decides (CRITICAL > WARNING > UNKNOWN > OK).")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    var connection: Connection { local.socket == nil ? root.connection : local }
    @Argument(help: "Domain id (default: all domains).") var domid: UInt32?

    /// Nagios state of a verdict: a failed scan is UNKNOWN (nothing is known about the guest).
    static func state(_ s: Severity) -> Int32 {
        switch s {
        case .ok, .notApplicable: return 0
        case .warning: return 1
        case .critical: return 2
        case .error: return 3
        }
    }

    static let names: [Int32: String] = [0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"]
    /// Aggregation order: a critical guest must not hide behind an unknown one.
    static func rank(_ state: Int32) -> Int { [0: 0, 3: 1, 1: 2, 2: 3][state] ?? 1 }

    func emit(_ state: Int32, _ text: String) -> ExitCode {
        print("P2M \(Self.names[state] ?? "UNKNOWN") - \(text)")
        return ExitCode(state)
    }

    func run() throws {
        let client = connection.client
        let r: HTTPResponse
        do {
            r = try client.request("GET", domid.map { "/v1/domains/\($0)" } ?? "/v1/domains")
        } catch {
            throw emit(3, "\(error)")
        }
        guard r.status == 200 else {
            throw emit(3, r.apiError.map { "\($0.code): \($0.message)" } ?? "HTTP \(r.status) from xenp2md")
        }
        let decoder = APIJSON.decoder()
        if let domid {
            guard let rep = try? decoder.decode(P2MReport.self, from: r.body) else { throw emit(3, "unreadable report for domain \(domid)") }
            let s = DomainSummary(report: rep, state: .running)
            let detail = rep.error ?? (s.findingKinds.isEmpty ? "no findings" : rep.findings.map { "\($0.kind.rawValue) x\($0.count)" }.joined(separator: ", "))
            throw emit(Self.state(rep.severity), "domain \(domid)\(rep.name.map { " (\($0))" } ?? ""): \(rep.severity.rawValue), \(detail) | findings=\(s.findings)")
        }
        guard let all = try? decoder.decode([DomainSummary].self, from: r.body) else { throw emit(3, "unreadable domain list") }
        let states = all.map { (Self.state($0.severity), $0) }
        var worst = states.map(\.0).max { Self.rank($0) < Self.rank($1) } ?? 0
        var counts: [Int32: Int] = [:]
        for (s, _) in states { counts[s, default: 0] += 1 }
        var text = "\(all.count) domains: \(counts[2] ?? 0) critical, \(counts[1] ?? 0) warning, \(counts[3] ?? 0) unknown, \(counts[0] ?? 0) ok"
        let bad = states.filter { $0.0 == worst && worst != 0 }.map { "\($0.1.domid)" + ($0.1.name.map { " \($0)" } ?? "") }
        if !bad.isEmpty { text += "; \(Self.names[worst]!.lowercased()): " + bad.joined(separator: ", ") }
        // The daemon cannot list the host's domains: these are last known states, so an
        // all-clear would be a guess. At least UNKNOWN; a known critical stays critical.
        if let why = all.lazy.compactMap(\.stale).first {
            if Self.rank(worst) < Self.rank(3) { worst = 3 }
            text += "; stale: \(why)"
        }
        text += " | critical=\(counts[2] ?? 0) warning=\(counts[1] ?? 0) unknown=\(counts[3] ?? 0) ok=\(counts[0] ?? 0)"
        throw emit(worst, text)
    }
}

/// Offline: the same engine over an `xl dump-core` file; needs neither a daemon nor Xen.
struct CheckCore: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-core",
        abstract: "Check the P2M of the guest in an xl dump-core file, offline (no daemon, no Xen).",
        discussion: "Exit status: 0 ok or not applicable, 1 warning, 2 critical, 3 the file cannot be read.")
    @Argument(help: "Dump-core file.", completion: .file()) var file: String
    @Flag(help: "Print the report JSON (same schema as `status --json`).") var json = false
    @Flag(help: "Print the pfn map instead of the summary.") var map = false
    @Option(help: "Domid to put in the report.") var domid: UInt32 = 0
    @Option(help: "Guest width in bits (32 or 64) if the file does not record it.") var width: Int?

    func run() throws {
        try guarded {
            let guestWidth: GuestWidth?
            switch width {
            case nil: guestWidth = nil
            case 32?: guestWidth = .bits32
            case 64?: guestWidth = .bits64
            case let w?: throw fail("--width must be 32 or 64, not \(w)", code: 3)
            }
            let c: CoreCheck
            do {
                c = try checkCoreFile(path: file, core: CoreDumpOptions(domid: domid, guestWidth: guestWidth))
            } catch {
                throw fail("\(error)", code: 3)
            }
            if json {
                writeOut(try P2MReport.encoder().encode(c.report))
            } else if map {
                print(Render.map(c.report), terminator: "")
            } else {
                print(c.core.description)
                print(Render.status(c.report), terminator: "")
            }
            throw Failure(code: Check.state(c.report.severity) == 3 ? 3 : Check.state(c.report.severity))
        }
    }
}

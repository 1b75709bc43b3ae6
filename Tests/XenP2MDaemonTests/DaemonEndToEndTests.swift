import Foundation
import P2MEngine
import Testing
import XenP2MAPI
import XenP2MDaemon
#if canImport(Glibc)
import Glibc
#endif

/// The real xenp2md and xenp2mctl, run as processes. One at a time, also with the nested
/// HostFaultTests: they start daemons, time them and signal them, and would measure each
/// other's load if they ran side by side.
@Suite(.serialized) final class DaemonEndToEndTests {
    let ctl: String

    init() throws {
        ctl = try Binaries.path("xenp2mctl")
        _ = try Binaries.path("xenp2md")
    }

    func ctl(_ d: DaemonUnderTest, _ args: String..., env: [String: String]? = nil) throws -> RunResult {
        try runTool(ctl, ["--socket", d.socket] + args, env: env)
    }

    // MARK: - --once and backends

    @Test func testOnceTableAndJSON() throws {
        let md = try Binaries.path("xenp2md")
        let table = try runTool(md, ["--backend", "sim", "--once"])
        #expect(table.status == 0, "\(table.stderr)")
        #expect(table.stdout.hasPrefix("DOMID  NAME"), "\(table.stdout)")
        #expect(table.stdout.contains("broken") && table.stdout.contains("critical"), "\(table.stdout)")
        let json = try runTool(md, ["--backend", "sim", "--once", "--json"])
        #expect(json.status == 0, "\(json.stderr)")
        let reports = try P2MReport.decoder().decode([P2MReport].self, from: Data(json.stdout.utf8))
        #expect(reports.map(\.domid) == ([1, 2, 3, 4, 5, 6]))
        #expect((reports.first { $0.domid == 6 }?.severity) == .critical)
    }

    @Test func testXenBackendWithoutXenExitsWithClearMessage() throws {
        if FileManager.default.fileExists(atPath: "/proc/xen/privcmd") || FileManager.default.fileExists(atPath: "/dev/xen/privcmd") {
            try Test.cancel("this machine is a Xen dom0")
        }
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try runTool(try Binaries.path("xenp2md"), ["--backend", "xen", "--socket", dir + "/s", "--state-dir", dir + "/st"], timeout: 30)
        #expect(r.status != 0)
        #expect(r.stderr.contains("xenp2md: no Xen here"), "\(r.stderr)")
        #expect(!(r.stderr.contains("Fatal error") || r.stderr.contains("Stack dump")), "\(r.stderr)")
        #expect((r.stderr.split(separator: "\n").filter { !$0.contains(" info ") }.count) == 1, "\(r.stderr)")
    }

    @Test func testConfigFileDefaultsAndErrors() throws {
        let shipped = Binaries.repoRoot.appendingPathComponent("config/xenp2md.yaml").path
        #expect((try DaemonConfig.load(path: shipped)) == DaemonConfig(), "config/xenp2md.yaml must document the built-in defaults")
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bad = dir + "/bad.yaml"
        try "poll:\n  interval_seconds: 30\n  concurent_scans: 2\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let r = try runTool(try Binaries.path("xenp2md"), ["--config", bad, "--backend", "sim", "--once"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("\(bad):3: poll.concurent_scans: unknown key"), "\(r.stderr)")
        try "socket:\n  mode: rw\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let r2 = try runTool(try Binaries.path("xenp2md"), ["--config", bad, "--backend", "sim", "--once"])
        #expect(r2.status == 2)
        #expect(r2.stderr.contains(":2: socket.mode: 'rw' is not an octal file mode"), "\(r2.stderr)")
        let ok = try runTool(try Binaries.path("xenp2md"), ["--config", shipped, "--backend", "sim", "--once"])
        #expect(ok.status == 0, "\(ok.stderr)")
    }

    // MARK: - CLI against a running daemon

    @Test func testEveryCLICommand() throws {
        // One poll only: the byte-for-byte comparison below reads the report twice, and a
        // poll in between legitimately replaces it (new duration, leaves reused).
        let d = try DaemonUnderTest(pollInterval: 3600)
        try d.waitReady()

        let list = try ctl(d, "list")
        #expect(list.status == 0, "\(list.stderr)")
        #expect(list.stdout.hasPrefix("DOMID  NAME         SEVERITY        FORMAT       LEVELS  MAX_PFN"), "\(list.stdout)")
        #expect((list.stdout.split(separator: "\n").count) == 7)

        let listJSON = try ctl(d, "list", "--json")
        let summaries = try APIJSON.decoder().decode([DomainSummary].self, from: Data(listJSON.stdout.utf8))
        #expect(summaries.map(\.domid) == ([1, 2, 3, 4, 5, 6]))
        #expect(summaries.map(\.severity) == ([.ok, .ok, .ok, .ok, .notApplicable, .critical]))
        // The contract: an array of objects with at least domid and severity.
        let raw = try JSONSerialization.jsonObject(with: Data(listJSON.stdout.utf8)) as! [[String: Any]]
        #expect((raw[0]["domid"] as? Int) != nil)
        #expect((raw[0]["severity"] as? String) != nil)

        let statusJSON = try ctl(d, "status", "6", "--json")
        #expect(statusJSON.status == 0, "\(statusJSON.stderr)")
        let report = try P2MReport.decoder().decode(P2MReport.self, from: Data(statusJSON.stdout.utf8))
        #expect(report.domid == 6)
        #expect(report.severity == .critical)
        #expect(Set(report.findings.map(\.kind)) == ([.m2pMismatch, .duplicateMfn, .treeListMismatch]))
        // Exactly the report JSON: what the API serves, byte for byte.
        let served = try d.client.request("GET", "/v1/domains/6")
        #expect(statusJSON.stdout == (String(decoding: served.body, as: UTF8.self)))

        let status = try ctl(d, "status", "6")
        #expect(status.status == 0)
        #expect(status.stdout.contains("severity      CRITICAL"), "\(status.stdout)")
        #expect(status.stdout.contains("m2p_mismatch x2"), "\(status.stdout)")

        let map = try ctl(d, "map", "6")
        #expect(map.status == 0, "\(map.stderr)")
        #expect(map.stdout.contains("legend: X faulty"), "\(map.stdout)")
        #expect(map.stdout.contains("    0x0 |"), "\(map.stdout)")
        #expect(map.stdout.contains("X"), "\(map.stdout)")
        let map4 = try ctl(d, "map", "4", "--width", "32")
        #expect(map4.stdout.contains("|I###"), "\(map4.stdout)") // legacy32: identity range at pfn 0xa0
        let map5 = try ctl(d, "map", "5")
        #expect(map5.stdout.contains("no pfn map"), "\(map5.stdout)")

        let checkAll = try ctl(d, "check")
        #expect(checkAll.status == 2)
        #expect(checkAll.stdout.hasPrefix("P2M CRITICAL - 6 domains: 1 critical"), "\(checkAll.stdout)")
        #expect((checkAll.stdout.split(separator: "\n").count) == 1)
        #expect((try ctl(d, "check", "1").status) == 0)
        #expect((try ctl(d, "check", "5").status) == 0)
        let check99 = try ctl(d, "check", "99")
        #expect(check99.status == 3)
        #expect(check99.stdout.hasPrefix("P2M UNKNOWN - not_found"), "\(check99.stdout)")

        let scan = try ctl(d, "scan", "2", "--json")
        #expect(scan.status == 0, "\(scan.stderr)")
        #expect((try P2MReport.decoder().decode(P2MReport.self, from: Data(scan.stdout.utf8)).domid) == 2)
        let scanMissing = try ctl(d, "scan", "77")
        #expect(scanMissing.status == 1)
        #expect(scanMissing.stderr.contains("not_found"), "\(scanMissing.stderr)")

        let metrics = try ctl(d, "metrics")
        #expect(metrics.status == 0)
        #expect(metrics.stdout.contains("xenp2m_domain_severity_level{domid=\"6\",name=\"broken\",uuid=\"c64faa56-4b77-4b38-b68d-1b025ec13a70\"} 3"), "\(metrics.stdout)")

        let watch = try ctl(d, "watch", "--since", "0", "--no-follow", "--json")
        #expect(watch.status == 0, "\(watch.stderr)")
        let events = try watch.stdout.split(separator: "\n").map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
        #expect((Set(events.filter { $0.kind == .domainNew }.map(\.domid))) == ([1, 2, 3, 4, 5, 6]))

        // The environment variable picks the socket when --socket is absent.
        var env = ProcessInfo.processInfo.environment
        env["XENP2M_SOCKET"] = d.socket
        #expect((try runTool(ctl, ["check", "1"], env: env).status) == 0)
        // --socket also works after the subcommand.
        #expect((try runTool(ctl, ["check", "1", "--socket", d.socket]).status) == 0)

        let completion = try runTool(ctl, ["--generate-completion-script", "bash"])
        #expect(completion.status == 0)
        #expect(completion.stdout.contains("xenp2mctl") && completion.stdout.contains("status"), "\(completion.stdout)")
    }

    @Test func testDaemonNotRunningIsOneClearLine() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try runTool(ctl, ["--socket", dir + "/none.sock", "list"])
        #expect(r.status == 1)
        #expect((r.stderr.split(separator: "\n").count) == 1, "\(r.stderr)")
        #expect(r.stderr.contains("xenp2md is not running (no socket"), "\(r.stderr)")
        let c = try runTool(ctl, ["--socket", dir + "/none.sock", "check"])
        #expect(c.status == 3)
        #expect(c.stdout.hasPrefix("P2M UNKNOWN - xenp2md is not running"), "\(c.stdout)")
        // A socket file nobody listens on: connection refused, same message family.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = Array((dir + "/dead.sock").utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: path) }
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(fd)
        let refused = try runTool(ctl, ["--socket", dir + "/dead.sock", "status", "1"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("connection refused"), "\(refused.stderr)")
    }

    /// check-core needs no daemon; unreadable files are one clear line and exit 3.
    /// (Verdicts on real dump files are covered by P2MDumpCoreTests.)
    @Test func testCheckCoreRefusesBadFilesClearly() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let missing = try runTool(ctl, ["check-core", dir + "/nope.core"])
        #expect(missing.status == 3)
        #expect((missing.stderr.split(separator: "\n").count) == 1, "\(missing.stderr)")
        let junk = dir + "/junk.core"
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: junk))
        let r = try runTool(ctl, ["check-core", junk, "--json"])
        #expect(r.status == 3)
        #expect(r.stderr.lowercased().contains("elf"), "\(r.stderr)")
        #expect(r.stdout == "")
    }

    // MARK: - HTTP API

    @Test func testHTTPEndpointsAndErrors() throws {
        let dir = try makeTempDir()
        try "http:\n  idle_timeout_seconds: 1\n  max_headers: 10\n  max_body_bytes: 100\n".write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", dir + "/c.yaml"])
        try d.waitReady()
        let c = d.client

        let health = try d.health()
        #expect(health.status == "ok")
        #expect(health.backend == "sim")
        #expect(health.domains == 6)
        #expect(health.worstSeverity == .critical)

        let report = try c.request("GET", "/v1/domains/1")
        #expect(report.status == 200)
        #expect((report.header("content-type")) == ("application/json"))
        #expect((try P2MReport.decoder().decode(P2MReport.self, from: report.body).name) == ("web-tree"))
        let history = try c.request("GET", "/v1/domains/1?history=1")
        #expect((try P2MReport.decoder().decode([P2MReport].self, from: history.body).count) >= 1)

        func expectError(_ method: String, _ path: String, _ status: Int, _ code: String,
                         sourceLocation: SourceLocation = #_sourceLocation) throws {
            let r = try c.request(method, path)
            #expect(r.status == status, "\(method) \(path)", sourceLocation: sourceLocation)
            #expect(r.apiError?.code == code, "\(String(decoding: r.body, as: UTF8.self))", sourceLocation: sourceLocation)
            #expect(!(r.apiError?.message.isEmpty ?? true), sourceLocation: sourceLocation)
        }
        try expectError("GET", "/v1/domains/999", 404, "not_found")
        try expectError("GET", "/v1/domains/abc", 400, "bad_request")
        try expectError("GET", "/v1/domains/-1", 400, "bad_request")
        try expectError("GET", "/v1/domains/99999999999", 400, "bad_request")
        try expectError("POST", "/v1/domains/abc/scan", 400, "bad_request")
        try expectError("POST", "/v1/domains/999/scan", 404, "not_found")
        try expectError("POST", "/v1/domains/1/scan?timeout=zero", 400, "bad_request")
        try expectError("GET", "/v1/events?since=x", 400, "bad_request")
        try expectError("GET", "/v1/nope", 404, "not_found")
        try expectError("GET", "/v1/domains/1/nope", 404, "not_found")
        try expectError("POST", "/v1/domains", 405, "method_not_allowed")
        try expectError("DELETE", "/v1/domains/1", 405, "method_not_allowed")
        try expectError("GET", "/v1/domains/1/scan", 405, "method_not_allowed")
        #expect((try c.request("POST", "/v1/health").header("allow")) == "GET")

        let scan = try c.request("POST", "/v1/domains/4/scan?timeout=20")
        #expect(scan.status == 200)
        #expect((try P2MReport.decoder().decode(P2MReport.self, from: scan.body).guestWidthBits) == 32)

        // Prometheus text: HELP/TYPE lines, xenp2m_ prefix, per-domain labels.
        let m = try c.request("GET", "/metrics")
        #expect(m.status == 200)
        #expect(m.header("content-type")?.hasPrefix("text/plain; version=0.0.4") ?? false)
        let text = String(decoding: m.body, as: UTF8.self)
        for name in ["xenp2m_domain_severity_level", "xenp2m_domain_p2m_entries", "xenp2m_domain_findings", "xenp2m_domain_p2m_levels",
                     "xenp2m_domain_max_pfn_published_pages", "xenp2m_domain_p2m_generation", "xenp2m_domain_last_scan_timestamp_seconds",
                     "xenp2m_domain_scan_duration_seconds", "xenp2m_domain_migration_ready", "xenp2m_scans_total",
                     "xenp2m_scan_errors_total", "xenp2m_poll_cycle_duration_seconds", "xenp2m_budget_throttled_seconds_total"] {
            #expect(text.contains("# TYPE \(name) "), "no TYPE for \(name)")
            #expect(text.contains("# HELP \(name) "), "no HELP for \(name)")
        }
        #expect(text.contains("# HELP xenp2m_domain_severity_level "))
        #expect(text.contains("xenp2m_domain_findings{domid=\"6\",name=\"broken\",uuid=\"c64faa56-4b77-4b38-b68d-1b025ec13a70\",kind=\"m2p_mismatch\"} 2"), "\(text)")
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            #expect(line.hasPrefix("xenp2m_"), "\(String(line))")
        }

        // Malformed HTTP: a JSON 400, then the connection closes.
        let garbage = parseRaw(try rawExchange(d.socket, Array("THIS IS NOT HTTP\r\n\r\n".utf8)))
        #expect(garbage.status == 400, "\(garbage.headers)")
        #expect(garbage.body.contains("\"code\":\"bad_request\""), "\(garbage.body)")
        let badVersion = parseRaw(try rawExchange(d.socket, Array("GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n".utf8)))
        #expect(badVersion.status == 400)

        // Limits: header count and body size.
        var many = "GET /v1/health HTTP/1.1\r\nHost: x\r\n"
        for i in 0..<20 { many += "X-Filler-\(i): y\r\n" }
        let tooMany = parseRaw(try rawExchange(d.socket, Array((many + "Connection: close\r\n\r\n").utf8)))
        #expect(tooMany.status == 431)
        #expect(tooMany.body.contains("header_fields_too_large"), "\(tooMany.body)")
        let body = String(repeating: "a", count: 500)
        let tooBig = parseRaw(try rawExchange(d.socket, Array("POST /v1/domains/1/scan HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n\(body)".utf8)))
        #expect(tooBig.status == 413)
        let hugeHeader = parseRaw(try rawExchange(d.socket, Array("GET /v1/health HTTP/1.1\r\nX-Big: \(String(repeating: "b", count: 100_000))\r\n\r\n".utf8)))
        #expect(hugeHeader.status == 431)

        // Keep-alive: two requests on one connection, then the idle limit closes it.
        let start = Date()
        let two = try rawExchange(d.socket, Array("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/domains/1 HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect((two.components(separatedBy: "HTTP/1.1 200 OK").count - 1) == 2, "\(two)")
        let held = Date().timeIntervalSince(start)
        #expect(held > 0.8)
        #expect(held < 5, "idle connection not closed by the 1 s idle limit")
    }

    // MARK: - Socket abuse (scripts/abuse.py has the full cases)

    /// Slow-loris: every byte resets the idle limit, so the request-head deadline (from a
    /// request's first byte) must close the connection; a stream whose head arrived is exempt.
    @Test func testRequestHeadDeadlineClosesATricklingClient() throws {
        let dir = try makeTempDir()
        try "http:\n  idle_timeout_seconds: 1\n  request_head_timeout_seconds: 2\n".write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", dir + "/c.yaml"])
        try d.waitReady()
        let watch = try d.client.connect()
        defer { close(watch) }
        try writeAll(watch, Array("GET /v1/events?since=0 HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        let watchStart = Date()

        let slow = try d.client.connect()
        defer { close(slow) }
        let request = Array("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: \(String(repeating: "s", count: 100))".utf8)
        let start = Date()
        var closedAfter: Double?
        var sent = 0
        while closedAfter == nil && Date().timeIntervalSince(start) < 6 {
            // A byte every 0.3 s: each resets the 1 s idle limit, none completes the head.
            if send(slow, [request[sent]], 1, Int32(MSG_NOSIGNAL)) != 1 {
                closedAfter = Date().timeIntervalSince(start)
                break
            }
            sent += 1
            var p = pollfd(fd: slow, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 300) == 1 {
                var b = [UInt8](repeating: 0, count: 64)
                if recv(slow, &b, b.count, 0) <= 0 { closedAfter = Date().timeIntervalSince(start) }
            }
            #expect((try d.client.request("GET", "/v1/health").status) == 200, "others are served meanwhile")
        }
        let closed = try #require(closedAfter, "a client sending one header byte every 0.3 s was never closed")
        #expect(closed > 1.7, "closed before the 2 s head deadline (\(sent) bytes sent)")
        #expect(closed < 3.5, "not closed by the 2 s head deadline")

        // The watcher is past both limits and still connected: reading finds data or
        // nothing yet, never end-of-file.
        usleep(useconds_t(max(0, 3 - Date().timeIntervalSince(watchStart)) * 1_000_000))
        var buf = [UInt8](repeating: 0, count: 65536)
        var n: Int
        repeat { n = recv(watch, &buf, buf.count, Int32(MSG_DONTWAIT)) } while n > 0
        #expect(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "the event stream was closed (recv \(n), errno \(errno))")
    }

    /// A body over max_body_bytes is refused as soon as that is known, and the connection
    /// closed, without waiting for (or reading) the rest.
    @Test func testOversizeBodyIsRefusedBeforeItArrives() throws {
        let dir = try makeTempDir()
        try "http:\n  idle_timeout_seconds: 5\n  max_body_bytes: 100\n".write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", dir + "/c.yaml"])
        try d.waitReady()
        let post = "POST /v1/domains/1/scan HTTP/1.1\r\nHost: x\r\n"
        let chunk = "40\r\n\(String(repeating: "a", count: 64))\r\n"
        for (label, request) in [("declared 100 MB, none sent", post + "Content-Length: 100000000\r\n\r\n"),
                                 ("chunked past the limit, no last chunk", post + "Transfer-Encoding: chunked\r\n\r\n" + chunk + chunk)] {
            let start = Date()
            // rawExchange reads until the daemon closes: the time covers the answer and the close.
            let r = parseRaw(try rawExchange(d.socket, Array(request.utf8)))
            let took = Date().timeIntervalSince(start)
            #expect(r.status == 413, "\(label): \(r.headers)")
            #expect(r.body.contains("\"code\":\"payload_too_large\""), "\(label): \(r.body)")
            #expect(r.headers.lowercased().contains("connection: close"), "\(label): \(r.headers)")
            #expect(took < 2, "\(label): 413 and close took \(took) s (idle limit 5 s)")
        }
        #expect((try d.client.request("GET", "/v1/health").status) == 200)
    }

    /// A client that writes its whole request before reading (what most do) reads the
    /// error answer, however much it still had to send: the daemon lingers, reading and
    /// dropping, instead of closing under it (its next write would fail with EPIPE).
    /// Both requests are far larger than the socket buffers.
    @Test func testErrorAnswersReachAClientStillSending() throws {
        let dir = try makeTempDir()
        try "http:\n  max_body_bytes: 100\n".write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", dir + "/c.yaml"])
        try d.waitReady()
        let header = "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "h", count: 2 << 20))\r\n\r\n"
        let h = parseRaw(try rawExchange(d.socket, Array(header.utf8)))
        #expect(h.status == 431, "\(h.headers)")
        #expect(h.body.contains("\"code\":\"header_fields_too_large\""), "\(h.body)")
        var body = Array("POST /v1/domains/1/scan HTTP/1.1\r\nHost: x\r\nContent-Length: \(64 << 20)\r\n\r\n".utf8)
        body += [UInt8](repeating: 0x62, count: 64 << 20)
        let b = parseRaw(try rawExchange(d.socket, body))
        #expect(b.status == 413, "\(b.headers)")
        #expect(b.body.contains("\"code\":\"payload_too_large\""), "\(b.body)")
        #expect((try d.client.request("GET", "/v1/health").status) == 200)
    }

    /// A body trickled after a complete head (each byte resets the idle limit): 408 once
    /// `http.request_body_timeout_seconds` have passed since the head.
    @Test func testTrickledBodyGets408() throws {
        let dir = try makeTempDir()
        try "http:\n  idle_timeout_seconds: 5\n  request_body_timeout_seconds: 1\n".write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", dir + "/c.yaml"])
        try d.waitReady()
        let fd = try d.client.connect()
        defer { close(fd) }
        try writeAll(fd, Array("POST /v1/domains/1/scan HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".utf8))
        let start = Date()
        var answer = [UInt8]()
        var sent = 0
        while Date().timeIntervalSince(start) < 4 {
            if sent < 90 && send(fd, "b", 1, Int32(MSG_NOSIGNAL)) == 1 { sent += 1 }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 200) == 1 {
                var buf = [UInt8](repeating: 0, count: 4096)
                let n = recv(fd, &buf, buf.count, 0)
                if n <= 0 { break }
                answer += buf[0..<n]
            }
        }
        let took = Date().timeIntervalSince(start)
        let r = parseRaw(String(decoding: answer, as: UTF8.self))
        #expect(r.status == 408, "\(r.headers) after \(took) s, \(sent) body bytes sent")
        #expect(r.body.contains("\"code\":\"request_timeout\""), "\(r.body)")
        #expect(r.body.contains("http.request_body_timeout_seconds"), "\(r.body)")
        #expect(took > 0.9 && took < 3, "408 and end of file after \(took) s (body deadline 1 s, idle limit 5 s)")
        // A body that arrives in time is not affected.
        #expect((try d.client.request("POST", "/v1/domains/1/scan")).status == 200)
    }

    /// `http.max_connections` open connections: the next one is answered 503 with
    /// Retry-After and closed; a following event stream leaves the request count for the
    /// stream count, and one stream over `http.max_event_streams` is refused the same way.
    @Test func testConnectionAndEventStreamLimits() throws {
        let dir = try makeTempDir()
        try "http:\n  max_connections: 2\n  max_event_streams: 1\n".write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", dir + "/c.yaml"])
        try d.waitReady()
        // Released slots are counted when the daemon sees the close: wait for health to pass.
        func healthAnswered() -> Bool { (try? d.client.request("GET", "/v1/health"))?.status == 200 }
        #expect(d.eventually(10) { healthAnswered() })

        // An admitted connection that sends nothing hears nothing; a refused one is
        // answered at once. The last request's slot is given back when the daemon sees it
        // close, so a connection opened just after it may still be refused: open again.
        func openAdmitted() throws -> Int32 {
            for _ in 0..<50 {
                let fd = try d.client.connect()
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, 200) == 0 { return fd }
                close(fd)
            }
            throw HarnessError("every connection was refused")
        }
        let idle = try (0..<2).map { _ in try openAdmitted() }
        #expect(d.eventually(5) { (try? d.client.request("GET", "/v1/health"))?.status == 503 }, "a third connection was served")
        let refused = parseRaw(try rawExchange(d.socket, Array("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n".utf8)))
        #expect(refused.status == 503, "\(refused.headers)")
        #expect(refused.headers.lowercased().contains("retry-after: 1"), "\(refused.headers)")
        #expect(refused.headers.lowercased().contains("connection: close"), "\(refused.headers)")
        #expect(refused.body.contains("\"code\":\"too_many_connections\""), "\(refused.body)")
        #expect(refused.body.contains("http.max_connections"), "\(refused.body)")
        close(idle[0])
        #expect(d.eventually(10) { healthAnswered() }, "a closed connection's slot was not given back")

        // One idle connection and one stream: the stream does not count against
        // max_connections, so requests are still served beside them.
        let stream = try openAdmitted()
        defer { close(stream) }
        try writeAll(stream, Array("GET /v1/events?since=0 HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        var first = [UInt8](repeating: 0, count: 4096)
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(stream, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        #expect(recv(stream, &first, first.count, 0) > 0, "the stream sent nothing")
        #expect(String(decoding: first, as: UTF8.self).hasPrefix("HTTP/1.1 200"))
        #expect(d.eventually(10) { healthAnswered() }, "a following stream still held a request slot")
        let second = parseRaw(try rawExchange(d.socket, Array("GET /v1/events?since=0 HTTP/1.1\r\nHost: x\r\n\r\n".utf8)))
        #expect(second.status == 503, "\(second.headers)")
        #expect(second.headers.lowercased().contains("retry-after: 1"), "\(second.headers)")
        #expect(second.body.contains("\"code\":\"too_many_event_streams\""), "\(second.body)")
        // A stream read to its end (follow=0) is an ordinary request, not a stream.
        #expect((try d.client.request("GET", "/v1/events?since=0&follow=0").status) == 200)
        close(idle[1])

        let metrics = String(decoding: try d.client.request("GET", "/metrics").body, as: UTF8.self)
        for limit in ["max_connections", "max_event_streams"] {
            let line = metrics.split(separator: "\n").first { $0.hasPrefix("xenp2m_http_connections_refused_total{limit=\"\(limit)\"}") }
            #expect((line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0) >= 1, "\(limit): \(String(describing: line))")
        }
    }

    /// Routing splits the still-encoded path: `%2F` is data, not a separator.
    @Test func testEncodedSlashIsNotAPathSeparator() throws {
        let d = try DaemonUnderTest()
        try d.waitReady()
        for (method, path) in [("GET", "/v1/domains/1%2fscan"), ("POST", "/v1/domains/1%2Fscan"), ("GET", "/v1%2fhealth")] {
            let r = try d.client.request(method, path)
            #expect(r.status == 400, "\(method) \(path): \(String(decoding: r.body, as: UTF8.self))")
            #expect(r.apiError?.code == "bad_request", "\(method) \(path)")
        }
        // Other escapes are still decoded, per segment.
        #expect((try d.client.request("GET", "/v1/domains/%31").status) == 200)
        #expect((try d.client.request("GET", "/v1/%68ealth").status) == 200)
    }

    /// SIGTERM while a manual scan is being waited for: the client gets 503 `unavailable`
    /// before the connection closes, and the daemon still stops promptly.
    /// A daemon whose domain 7 takes seconds to scan: probing every data frame of a
    /// 2 GiB guest (debug build), from a fleet that builds in a fraction of one.
    func slowScanDaemon(extraConfig: String = "") throws -> DaemonUnderTest {
        let dir = try makeTempDir()
        try "host:\n  memory_gib: 8\ndomains:\n  - {domid: 7, name: slow, memory_mib: 2048}\n"
            .write(toFile: dir + "/fleet.yaml", atomically: true, encoding: .utf8)
        try ("poll:\n  probe_data_frames: true\n  interval_seconds: 3600\n  budget_frames_per_second: 0\n" + extraConfig)
            .write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--scenario", dir + "/fleet.yaml", "--config", dir + "/c.yaml"], pollInterval: nil)
        #expect(d.eventually(30) { (try? d.client.request("GET", "/v1/health"))?.status == 200 }, "\(d.log)")
        return d
    }

    @Test func testSigtermAnswersAnInFlightScanWith503() throws {
        let d = try slowScanDaemon()

        final class Box: @unchecked Sendable {
            var response: HTTPResponse?
            var error: Error?
        }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        let socket = d.socket
        DispatchQueue.global().async {
            do {
                box.response = try UnixHTTPClient(socketPath: socket, timeout: 30).request("POST", "/v1/domains/7/scan?timeout=60")
            } catch {
                box.error = error
            }
            done.signal()
        }
        usleep(500_000)
        #expect((done.wait(timeout: .now())) == .timedOut, "the scan finished before SIGTERM: nothing was in flight")
        let start = Date()
        d.signal(SIGTERM)
        #expect((done.wait(timeout: .now() + 15)) == .success, "the scan request got no answer")
        #expect(box.error == nil, "\(box.error.map { "\($0)" } ?? "")")
        #expect(box.response?.status == 503, "\(box.response.map { String(decoding: $0.body, as: UTF8.self) } ?? "")")
        #expect(box.response?.apiError?.code == "unavailable")
        #expect((d.waitExit(timeout: 15)) == 0, "\(d.log)")
        #expect(Date().timeIntervalSince(start) < 10)
        #expect(d.log.contains("xenp2md stopped"), "\(d.log)")
    }

    @Test func testALongScanIsAnsweredPastTheIdleLimit() throws {
        // The idle limit is far shorter than the scan.
        let d = try slowScanDaemon(extraConfig: "http:\n  idle_timeout_seconds: 0.3\n")
        let start = Date()
        let r = try UnixHTTPClient(socketPath: d.socket, timeout: 60).request("POST", "/v1/domains/7/scan?timeout=60")
        let took = Date().timeIntervalSince(start)
        #expect(r.status == 200, "\(String(decoding: r.body, as: UTF8.self))")
        #expect(took > 0.6, "the scan took \(took) s, less than two idle limits: this proved nothing")
    }

    // MARK: - Events

    @Test func testBalloonProducesEventsOnTheStream() throws {
        let d = try DaemonUnderTest(pollInterval: 0.2)
        try d.waitReady()
        // Raw: the stream is chunked NDJSON.
        let fd = try d.client.connect()
        defer { close(fd) }
        try writeAll(fd, Array("GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var got = ""
        var buf = [UInt8](repeating: 0, count: 8192)
        while !got.contains("memory_changed") {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            got += String(decoding: buf[0..<n], as: UTF8.self)
        }
        #expect(got.lowercased().contains("transfer-encoding: chunked"), "\(got)")
        #expect(got.contains("application/x-ndjson"), "\(got)")
        #expect(got.contains("\"kind\":\"memory_changed\""), "\(got)")

        // And through the CLI.
        let w = try runTool(ctl, ["--socket", d.socket, "watch", "--count", "2", "--json"], timeout: 30)
        #expect(w.status == 0, "\(w.stderr)")
        let events = try w.stdout.split(separator: "\n").map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
        #expect(events.count == 2)
        #expect(events.allSatisfy { $0.kind == .memoryChanged && $0.domid == 2 && $0.name == "db-balloon" })
        #expect(events[0].seq < events[1].seq)
        let human = try runTool(ctl, ["--socket", d.socket, "watch", "--count", "1"], timeout: 30)
        #expect(human.stdout.contains("memory_changed") && human.stdout.contains("db-balloon"), "\(human.stdout)")
    }

    @Test func testDomainGoneAndStoppingEvents() throws {
        let dir = try makeTempDir()
        let scenario = dir + "/fleet.yaml"
        try """
        host:
          memory_gib: 4
        domains:
          - domid: 1
            name: steady
            memory_mib: 256
          - domid: 7
            name: doomed
            memory_mib: 256
            faults:
              - {kind: vanish_after_map_calls, count: 3}
        """.write(toFile: scenario, atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--scenario", scenario])
        try d.waitReady()
        let found = try d.eventually {
            let r = try d.client.request("GET", "/v1/events?since=0&follow=0")
            return String(decoding: r.body, as: UTF8.self).contains("\"kind\":\"domain_gone\"")
        }
        #expect(found, "\(d.log)")
        let r = try d.client.request("GET", "/v1/events?since=0&follow=0")
        let events = try String(decoding: r.body, as: UTF8.self).split(separator: "\n").map {
            try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8))
        }
        #expect((events.first { $0.kind == .domainGone }?.domid) == 7)
        #expect((try d.client.request("GET", "/v1/domains/7").status) == 404)
        #expect((try d.health().domains) == 1)
        // Persisted as an incident.
        let log = try String(contentsOfFile: d.stateDir + "/incidents.jsonl", encoding: .utf8)
        #expect(log.contains("\"kind\":\"domain_gone\""))
    }

    // MARK: - Peers

    @Test func testUnprivilegedPeerCannotTriggerScans() throws {
        let dir = try makeTempDir()
        try "socket:\n  mode: \"0666\"\n".write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", dir + "/c.yaml"])
        try d.waitReady()
        var st = stat()
        #expect((stat(d.socket, &st)) == 0)
        #expect((st.st_mode & 0o777) == 0o666)
        let setpriv = "/usr/bin/setpriv"
        #expect(FileManager.default.isExecutableFile(atPath: setpriv), "setpriv (util-linux) is needed for this test")
        let asNobody = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", ctl, "--socket", d.socket]
        let read = try runTool(setpriv, asNobody + ["check", "1"])
        #expect(read.status == 0, "\(read.stdout + read.stderr)")
        let scan = try runTool(setpriv, asNobody + ["scan", "1"])
        #expect(scan.status == 1)
        #expect(scan.stderr.contains("forbidden"), "\(scan.stderr)")
        // Root may.
        #expect((try ctl(d, "scan", "1").status) == 0)
    }

    @Test func testDefaultSocketModeIs0660() throws {
        let d = try DaemonUnderTest()
        try d.waitReady()
        var st = stat()
        #expect((stat(d.socket, &st)) == 0)
        #expect((st.st_mode & 0o777) == 0o660)
    }

    /// The optional TCP listener serves /metrics on loopback and nothing else.
    @Test func testMetricsTCPListener() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // An ephemeral port the kernel just handed out, so parallel runs do not collide.
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(probe, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        close(probe)
        let cfg = dir + "/c.yaml"
        try "metrics:\n  port: \(port)\n  address: 127.0.0.1\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", cfg])
        try d.waitReady()
        let metrics = try runTool("/usr/bin/curl", ["-s", "-o", "-", "-w", "\n%{http_code}", "http://127.0.0.1:\(port)/metrics"])
        #expect(metrics.stdout.hasSuffix("\n200"), "\(metrics.stdout)")
        #expect(metrics.stdout.contains("# TYPE xenp2m_domain_severity_level gauge"), "\(metrics.stdout)")
        let other = try runTool("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/v1/domains"])
        #expect(other.stdout == "404", "\(d.log)")
    }

    // MARK: - Signals and restarts

    @Test func testSighupReloadsGoodConfigAndKeepsOldOnBrokenOne() throws {
        let dir = try makeTempDir()
        let cfg = dir + "/c.yaml"
        try "poll:\n  interval_seconds: 0.5\n  concurrent_scans: 1\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", cfg], pollInterval: nil)
        let h1 = try d.waitReady()
        #expect(h1.pollIntervalSeconds == 0.5)
        #expect(h1.concurrentScans == 1)

        try "poll:\n  interval_seconds: 0.7\n  concurrent_scans: 3\nlog_level: debug\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        d.signal(SIGHUP)
        #expect(try d.eventually { try d.health().configGeneration == h1.configGeneration + 1 }, "\(d.log)")
        let h2 = try d.health()
        #expect(h2.pollIntervalSeconds == 0.7)
        #expect(h2.concurrentScans == 3)
        #expect(h2.configError == nil)

        try "poll:\n  interval_seconds: 0.9\n  concurrent_scans: many\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        d.signal(SIGHUP)
        #expect(try d.eventually { try d.health().configError != nil }, "\(d.log)")
        let h3 = try d.health()
        #expect(h3.configGeneration == h2.configGeneration)
        #expect(h3.pollIntervalSeconds == 0.7, "a broken file must keep the old config")
        #expect(h3.configError?.contains("c.yaml:3: poll.concurrent_scans") ?? false, "\(h3.configError ?? "")")
        #expect(d.isRunning)
        #expect(d.log.contains("config rejected, keeping the running config"), "\(d.log)")
        // Still serving and polling.
        let polls = h3.polls
        #expect(try d.eventually { try d.health().polls > polls })
    }

    @Test func testSigtermStopsGracefullyAndQuickly() throws {
        let d = try DaemonUnderTest()
        try d.waitReady()
        // A watch client must see its stream end cleanly, not hang the shutdown.
        let watchOut = d.dir + "/watch.out"
        let watcher = try spawn(ctl, ["--socket", d.socket, "watch"], env: ProcessInfo.processInfo.environment,
                                stdout: watchOut, stderr: watchOut)
        usleep(300_000)
        let t0 = Date()
        d.signal(SIGTERM)
        let status = d.waitExit(timeout: 15)
        #expect(status == 0, "\(d.log)")
        #expect(Date().timeIntervalSince(t0) < 12)
        #expect(!(FileManager.default.fileExists(atPath: d.socket)), "socket file left behind")
        #expect(d.log.contains("xenp2md stopped"), "\(d.log)")
        let watchStatus = waitFor(watcher, timeout: 10)
        if watchStatus == nil { kill(watcher, SIGKILL); _ = waitFor(watcher, timeout: 5) }
        #expect(watchStatus == 0, "\("watch did not end cleanly when the daemon stopped: " + ((try? String(contentsOfFile: watchOut, encoding: .utf8)) ?? ""))")
    }

    @Test func testKill9AndRestartKeepsIncidentLog() throws {
        let dir = try makeTempDir()
        func incidents(_ d: DaemonUnderTest) throws -> [DaemonEvent] {
            let r = try d.client.request("GET", "/v1/events?since=0&follow=0")
            return try String(decoding: r.body, as: UTF8.self).split(separator: "\n")
                .map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
                .filter { $0.kind.isIncident }
        }
        func allEvents(_ d: DaemonUnderTest) throws -> [DaemonEvent] {
            let r = try d.client.request("GET", "/v1/events?since=0&follow=0")
            return try String(decoding: r.body, as: UTF8.self).split(separator: "\n")
                .map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
        }
        let first = try DaemonUnderTest(dir: dir)
        first.removeOnDeinit = false
        try first.waitReady()
        // The demo's ballooning guest: streamed-only events, numbered after the incidents
        // and kept in no log.
        #expect(first.eventually(30) { ((try? allEvents(first)) ?? []).contains { $0.kind == .memoryChanged } })
        let before = try incidents(first)
        let seenBefore = try allEvents(first).map(\.seq).max() ?? 0
        #expect(seenBefore > before.map(\.seq).max()!)
        #expect((Set(before.filter { $0.kind == .domainNew }.map(\.domid))) == ([1, 2, 3, 4, 5, 6]))
        first.signal(SIGKILL)
        #expect((first.waitExit(timeout: 10)) != nil)

        let second = try DaemonUnderTest(dir: dir)
        try second.waitReady()
        #expect(second.log.contains("incidents_loaded=\(before.count) "), "\(second.log)")
        let after = try incidents(second)
        // Everything reported before the kill is still there, unchanged, and numbering
        // continues after it.
        #expect(Array(after.prefix(before.count)) == before)
        let newOnes = after.dropFirst(before.count)
        #expect(!newOnes.isEmpty)
        #expect(newOnes.allSatisfy { $0.seq > before.map(\.seq).max()! })
        // Not a number a watcher saw before the kill, streamed events included.
        let newSeqs = try allEvents(second).map(\.seq).filter { $0 > before.map(\.seq).max()! }
        #expect(!newSeqs.isEmpty && newSeqs.allSatisfy { $0 > seenBefore }, "\(newSeqs.prefix(5)) after \(seenBefore)")
        // The file is valid JSON lines throughout.
        let lines = try String(contentsOfFile: dir + "/state/incidents.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == after.count)
        for l in lines { #expect(throws: Never.self) { try APIJSON.decoder().decode(DaemonEvent.self, from: Data(l.utf8)) } }
        #expect((try second.health().incidents) == UInt64(after.count))
    }

    @Test func testTornIncidentLogLineIsSkipped() throws {
        let dir = try makeTempDir()
        try FileManager.default.createDirectory(atPath: dir + "/state", withIntermediateDirectories: true)
        // Whole seconds: the log's ISO 8601 dates carry no fraction.
        let e = DaemonEvent(seq: 41, time: Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down)), kind: .severityChanged, domid: 9, name: "old", uuid: nil, severity: .critical,
                            previous: "ok", current: "critical", message: "domain 9 (old): ok -> critical")
        var data = try APIJSON.encoder().encode(e)
        data.append(contentsOf: Array("\n{\"seq\":42,\"ti".utf8)) // torn by a crash
        #expect(FileManager.default.createFile(atPath: dir + "/state/incidents.jsonl", contents: data))
        let d = try DaemonUnderTest(dir: dir)
        try d.waitReady()
        let r = try d.client.request("GET", "/v1/events?since=0&follow=0")
        let events = try String(decoding: r.body, as: UTF8.self).split(separator: "\n")
            .map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
        #expect(events.first == e)
        #expect(events.dropFirst().first?.seq == 42)
        #expect(d.log.contains("skipped unreadable lines"), "\(d.log)")
    }

    // MARK: - systemd

    @Test func testSocketActivationWithListenFDs() throws {
        let activate = "/usr/bin/systemd-socket-activate"
        #expect(FileManager.default.isExecutableFile(atPath: activate), "systemd-socket-activate (package systemd) is needed")
        let dir = try makeTempDir()
        let socket = dir + "/xenp2md.sock"
        // systemd-socket-activate binds the socket, sets LISTEN_FDS/LISTEN_PID and execs the
        // daemon on the first connection, exactly as systemd does for xenp2md.socket.
        let d = try DaemonUnderTest(dir: dir, launcher: [activate, "--listen=\(socket)"], useSocketFlag: false)
        try d.waitReady()
        #expect(d.log.contains("using the socket passed by systemd"), "\(d.log)")
        #expect((try d.client.request("GET", "/v1/domains/6").status) == 200)
        let check = try runTool(ctl, ["--socket", socket, "check", "1"])
        #expect(check.status == 0, "\(check.stdout)")
        d.signal(SIGTERM)
        #expect((d.waitExit(timeout: 15)) == 0, "\(d.log)")
    }

    @Test func testNotifyReadyStatusAndWatchdog() throws {
        let dir = try makeTempDir()
        let notify = dir + "/notify.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(notify.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        #expect((withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }) == 0)
        var tv = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let d = try DaemonUnderTest(dir: dir, env: ["NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "400000"])
        var messages: [String] = []
        let deadline = Date().addingTimeInterval(30)
        var buf = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { messages.append(String(decoding: buf[0..<n], as: UTF8.self)) }
            let all = messages.joined(separator: "\n")
            if all.contains("READY=1") && all.components(separatedBy: "WATCHDOG=1").count > 2 { break }
        }
        let all = messages.joined(separator: "\n")
        #expect(all.contains("READY=1"), "\(all)")
        #expect(all.contains("STATUS=6 domains, worst critical (domain 6 broken)"), "\(all)")
        #expect((all.components(separatedBy: "WATCHDOG=1").count) > 2, "\(all)")
        // READY only after the first poll: by then the API knows every domain.
        #expect((try d.health().domains) == 6)
        d.signal(SIGTERM)
        #expect((d.waitExit(timeout: 15)) == 0)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        var tail = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
        while true {
            let m = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if m <= 0 { break }
            tail += String(decoding: buf[0..<m], as: UTF8.self)
        }
        #expect((all + tail).contains("STOPPING=1"), "\(all + tail)")
    }

    @Test func testSystemdUnitsVerify() throws {
        let analyze = "/usr/bin/systemd-analyze"
        #expect(FileManager.default.isExecutableFile(atPath: analyze), "systemd-analyze is needed")
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let root = Binaries.repoRoot.appendingPathComponent("systemd")
        let service = try String(contentsOf: root.appendingPathComponent("xenp2md.service"), encoding: .utf8)
        #expect(service.contains("Type=notify"))
        #expect(service.contains("DeviceAllow=/dev/xen/privcmd rw"))
        #expect(service.contains("WatchdogSec="))
        // verify needs ExecStart to exist: point it at the built binary.
        let rewritten = service.replacingOccurrences(of: "ExecStart=/usr/sbin/xenp2md", with: "ExecStart=" + (try Binaries.path("xenp2md")))
        #expect(rewritten != service)
        try rewritten.write(toFile: dir + "/xenp2md.service", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: root.appendingPathComponent("xenp2md.socket").path, toPath: dir + "/xenp2md.socket")
        let r = try runTool(analyze, ["verify", dir + "/xenp2md.service", dir + "/xenp2md.socket"])
        #expect(r.status == 0, "\(r.stdout + r.stderr)")
        #expect((r.stderr.trimmingCharacters(in: .whitespacesAndNewlines)) == "", "\(r.stderr)")
    }
}

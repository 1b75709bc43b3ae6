import Foundation
import P2MEngine
import XCTest
import XenP2MAPI
import XenP2MDaemon
#if canImport(Glibc)
import Glibc
#endif

final class DaemonEndToEndTests: XCTestCase {
    var ctl: String!

    override func setUpWithError() throws {
        ctl = try Binaries.path("xenp2mctl")
        _ = try Binaries.path("xenp2md")
    }

    func ctl(_ d: DaemonUnderTest, _ args: String..., env: [String: String]? = nil) throws -> RunResult {
        try runTool(ctl, ["--socket", d.socket] + args, env: env)
    }

    // MARK: - --once and backends

    func testOnceTableAndJSON() throws {
        let md = try Binaries.path("xenp2md")
        let table = try runTool(md, ["--backend", "sim", "--once"])
        XCTAssertEqual(table.status, 0, table.stderr)
        XCTAssertTrue(table.stdout.hasPrefix("DOMID  NAME"), table.stdout)
        XCTAssertTrue(table.stdout.contains("broken") && table.stdout.contains("critical"), table.stdout)
        let json = try runTool(md, ["--backend", "sim", "--once", "--json"])
        XCTAssertEqual(json.status, 0, json.stderr)
        let reports = try P2MReport.decoder().decode([P2MReport].self, from: Data(json.stdout.utf8))
        XCTAssertEqual(reports.map(\.domid), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(reports.first { $0.domid == 6 }?.severity, .critical)
    }

    func testXenBackendWithoutXenExitsWithClearMessage() throws {
        if FileManager.default.fileExists(atPath: "/proc/xen/privcmd") || FileManager.default.fileExists(atPath: "/dev/xen/privcmd") {
            throw XCTSkip("this machine is a Xen dom0")
        }
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try runTool(try Binaries.path("xenp2md"), ["--backend", "xen", "--socket", dir + "/s", "--state-dir", dir + "/st"], timeout: 30)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("xenp2md: no Xen here"), r.stderr)
        XCTAssertFalse(r.stderr.contains("Fatal error") || r.stderr.contains("Stack dump"), r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").filter { !$0.contains(" info ") }.count, 1, r.stderr)
    }

    func testConfigFileDefaultsAndErrors() throws {
        let shipped = Binaries.repoRoot.appendingPathComponent("config/xenp2md.yaml").path
        XCTAssertEqual(try DaemonConfig.load(path: shipped), DaemonConfig(), "config/xenp2md.yaml must document the built-in defaults")
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bad = dir + "/bad.yaml"
        try "poll:\n  interval_seconds: 30\n  concurent_scans: 2\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let r = try runTool(try Binaries.path("xenp2md"), ["--config", bad, "--backend", "sim", "--once"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("\(bad):3: poll.concurent_scans: unknown key"), r.stderr)
        try "socket:\n  mode: rw\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let r2 = try runTool(try Binaries.path("xenp2md"), ["--config", bad, "--backend", "sim", "--once"])
        XCTAssertEqual(r2.status, 2)
        XCTAssertTrue(r2.stderr.contains(":2: socket.mode: 'rw' is not an octal file mode"), r2.stderr)
        let ok = try runTool(try Binaries.path("xenp2md"), ["--config", shipped, "--backend", "sim", "--once"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
    }

    // MARK: - CLI against a running daemon

    func testEveryCLICommand() throws {
        // One poll only: the byte-for-byte comparison below reads the report twice, and a
        // poll in between legitimately replaces it (new duration, leaves reused).
        let d = try DaemonUnderTest(pollInterval: 3600)
        try d.waitReady()

        let list = try ctl(d, "list")
        XCTAssertEqual(list.status, 0, list.stderr)
        XCTAssertTrue(list.stdout.hasPrefix("DOMID  NAME         SEVERITY        FORMAT       LEVELS  MAX_PFN"), list.stdout)
        XCTAssertEqual(list.stdout.split(separator: "\n").count, 7)

        let listJSON = try ctl(d, "list", "--json")
        let summaries = try APIJSON.decoder().decode([DomainSummary].self, from: Data(listJSON.stdout.utf8))
        XCTAssertEqual(summaries.map(\.domid), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(summaries.map(\.severity), [.ok, .ok, .ok, .ok, .notApplicable, .critical])
        // The contract: an array of objects with at least domid and severity.
        let raw = try JSONSerialization.jsonObject(with: Data(listJSON.stdout.utf8)) as! [[String: Any]]
        XCTAssertNotNil(raw[0]["domid"] as? Int)
        XCTAssertNotNil(raw[0]["severity"] as? String)

        let statusJSON = try ctl(d, "status", "6", "--json")
        XCTAssertEqual(statusJSON.status, 0, statusJSON.stderr)
        let report = try P2MReport.decoder().decode(P2MReport.self, from: Data(statusJSON.stdout.utf8))
        XCTAssertEqual(report.domid, 6)
        XCTAssertEqual(report.severity, .critical)
        XCTAssertEqual(Set(report.findings.map(\.kind)), [.m2pMismatch, .duplicateMfn, .treeListMismatch])
        // Exactly the report JSON: what the API serves, byte for byte.
        let served = try d.client.request("GET", "/v1/domains/6")
        XCTAssertEqual(statusJSON.stdout, String(decoding: served.body, as: UTF8.self))

        let status = try ctl(d, "status", "6")
        XCTAssertEqual(status.status, 0)
        XCTAssertTrue(status.stdout.contains("severity      CRITICAL"), status.stdout)
        XCTAssertTrue(status.stdout.contains("m2p_mismatch x2"), status.stdout)

        let map = try ctl(d, "map", "6")
        XCTAssertEqual(map.status, 0, map.stderr)
        XCTAssertTrue(map.stdout.contains("legend: X faulty"), map.stdout)
        XCTAssertTrue(map.stdout.contains("    0x0 |"), map.stdout)
        XCTAssertTrue(map.stdout.contains("X"), map.stdout)
        let map4 = try ctl(d, "map", "4", "--width", "32")
        XCTAssertTrue(map4.stdout.contains("|I###"), map4.stdout) // legacy32: identity range at pfn 0xa0
        let map5 = try ctl(d, "map", "5")
        XCTAssertTrue(map5.stdout.contains("no pfn map"), map5.stdout)

        let checkAll = try ctl(d, "check")
        XCTAssertEqual(checkAll.status, 2)
        XCTAssertTrue(checkAll.stdout.hasPrefix("P2M CRITICAL - 6 domains: 1 critical"), checkAll.stdout)
        XCTAssertEqual(checkAll.stdout.split(separator: "\n").count, 1)
        XCTAssertEqual(try ctl(d, "check", "1").status, 0)
        XCTAssertEqual(try ctl(d, "check", "5").status, 0)
        let check99 = try ctl(d, "check", "99")
        XCTAssertEqual(check99.status, 3)
        XCTAssertTrue(check99.stdout.hasPrefix("P2M UNKNOWN - not_found"), check99.stdout)

        let scan = try ctl(d, "scan", "2", "--json")
        XCTAssertEqual(scan.status, 0, scan.stderr)
        XCTAssertEqual(try P2MReport.decoder().decode(P2MReport.self, from: Data(scan.stdout.utf8)).domid, 2)
        let scanMissing = try ctl(d, "scan", "77")
        XCTAssertEqual(scanMissing.status, 1)
        XCTAssertTrue(scanMissing.stderr.contains("not_found"), scanMissing.stderr)

        let metrics = try ctl(d, "metrics")
        XCTAssertEqual(metrics.status, 0)
        XCTAssertTrue(metrics.stdout.contains("xenp2m_domain_severity_level{domid=\"6\",name=\"broken\",uuid=\"c64faa56-4b77-4b38-b68d-1b025ec13a70\"} 3"), metrics.stdout)

        let watch = try ctl(d, "watch", "--since", "0", "--no-follow", "--json")
        XCTAssertEqual(watch.status, 0, watch.stderr)
        let events = try watch.stdout.split(separator: "\n").map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
        XCTAssertEqual(Set(events.filter { $0.kind == .domainNew }.map(\.domid)), [1, 2, 3, 4, 5, 6])

        // The environment variable picks the socket when --socket is absent.
        var env = ProcessInfo.processInfo.environment
        env["XENP2M_SOCKET"] = d.socket
        XCTAssertEqual(try runTool(ctl, ["check", "1"], env: env).status, 0)
        // --socket also works after the subcommand.
        XCTAssertEqual(try runTool(ctl, ["check", "1", "--socket", d.socket]).status, 0)

        let completion = try runTool(ctl, ["--generate-completion-script", "bash"])
        XCTAssertEqual(completion.status, 0)
        XCTAssertTrue(completion.stdout.contains("xenp2mctl") && completion.stdout.contains("status"), completion.stdout)
    }

    func testDaemonNotRunningIsOneClearLine() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try runTool(ctl, ["--socket", dir + "/none.sock", "list"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("xenp2md is not running (no socket"), r.stderr)
        let c = try runTool(ctl, ["--socket", dir + "/none.sock", "check"])
        XCTAssertEqual(c.status, 3)
        XCTAssertTrue(c.stdout.hasPrefix("P2M UNKNOWN - xenp2md is not running"), c.stdout)
        // A socket file nobody listens on: connection refused, same message family.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = Array((dir + "/dead.sock").utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: path) }
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(fd)
        let refused = try runTool(ctl, ["--socket", dir + "/dead.sock", "status", "1"])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("connection refused"), refused.stderr)
    }

    /// check-core needs no daemon; unreadable files are one clear line and exit 3.
    /// (Verdicts on real dump files are covered by P2MDumpCoreTests.)
    func testCheckCoreRefusesBadFilesClearly() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let missing = try runTool(ctl, ["check-core", dir + "/nope.core"])
        XCTAssertEqual(missing.status, 3)
        XCTAssertEqual(missing.stderr.split(separator: "\n").count, 1, missing.stderr)
        let junk = dir + "/junk.core"
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: junk))
        let r = try runTool(ctl, ["check-core", junk, "--json"])
        XCTAssertEqual(r.status, 3)
        XCTAssertTrue(r.stderr.lowercased().contains("elf"), r.stderr)
        XCTAssertEqual(r.stdout, "")
    }

    // MARK: - HTTP API

    func testHTTPEndpointsAndErrors() throws {
        let dir = try makeTempDir()
        try "http:\n  idle_timeout_seconds: 1\n  max_headers: 10\n  max_body_bytes: 100\n".write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", dir + "/c.yaml"])
        try d.waitReady()
        let c = d.client

        let health = try d.health()
        XCTAssertEqual(health.status, "ok")
        XCTAssertEqual(health.backend, "sim")
        XCTAssertEqual(health.domains, 6)
        XCTAssertEqual(health.worstSeverity, .critical)

        let report = try c.request("GET", "/v1/domains/1")
        XCTAssertEqual(report.status, 200)
        XCTAssertEqual(report.header("content-type"), "application/json")
        XCTAssertEqual(try P2MReport.decoder().decode(P2MReport.self, from: report.body).name, "web-tree")
        let history = try c.request("GET", "/v1/domains/1?history=1")
        XCTAssertGreaterThanOrEqual(try P2MReport.decoder().decode([P2MReport].self, from: history.body).count, 1)

        func expectError(_ method: String, _ path: String, _ status: Int, _ code: String, line: UInt = #line) throws {
            let r = try c.request(method, path)
            XCTAssertEqual(r.status, status, "\(method) \(path)", line: line)
            XCTAssertEqual(r.apiError?.code, code, String(decoding: r.body, as: UTF8.self), line: line)
            XCTAssertFalse(r.apiError?.message.isEmpty ?? true, line: line)
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
        XCTAssertEqual(try c.request("POST", "/v1/health").header("allow"), "GET")

        let scan = try c.request("POST", "/v1/domains/4/scan?timeout=20")
        XCTAssertEqual(scan.status, 200)
        XCTAssertEqual(try P2MReport.decoder().decode(P2MReport.self, from: scan.body).guestWidthBits, 32)

        // Prometheus text: HELP/TYPE lines, xenp2m_ prefix, per-domain labels.
        let m = try c.request("GET", "/metrics")
        XCTAssertEqual(m.status, 200)
        XCTAssertTrue(m.header("content-type")?.hasPrefix("text/plain; version=0.0.4") ?? false)
        let text = String(decoding: m.body, as: UTF8.self)
        for name in ["xenp2m_domain_severity_level", "xenp2m_domain_p2m_entries", "xenp2m_domain_findings", "xenp2m_domain_p2m_levels",
                     "xenp2m_domain_max_pfn_published_pages", "xenp2m_domain_p2m_generation", "xenp2m_domain_last_scan_timestamp_seconds",
                     "xenp2m_domain_scan_duration_seconds", "xenp2m_domain_migration_ready", "xenp2m_scans_total",
                     "xenp2m_scan_errors_total", "xenp2m_poll_cycle_duration_seconds", "xenp2m_budget_throttled_seconds_total"] {
            XCTAssertTrue(text.contains("# TYPE \(name) "), "no TYPE for \(name)")
            XCTAssertTrue(text.contains("# HELP \(name) "), "no HELP for \(name)")
        }
        XCTAssertTrue(text.contains("# HELP xenp2m_domain_severity_level "))
        XCTAssertTrue(text.contains("xenp2m_domain_findings{domid=\"6\",name=\"broken\",uuid=\"c64faa56-4b77-4b38-b68d-1b025ec13a70\",kind=\"m2p_mismatch\"} 2"), text)
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            XCTAssertTrue(line.hasPrefix("xenp2m_"), String(line))
        }

        // Malformed HTTP: a JSON 400, then the connection closes.
        let garbage = parseRaw(try rawExchange(d.socket, Array("THIS IS NOT HTTP\r\n\r\n".utf8)))
        XCTAssertEqual(garbage.status, 400, garbage.headers)
        XCTAssertTrue(garbage.body.contains("\"code\":\"bad_request\""), garbage.body)
        let badVersion = parseRaw(try rawExchange(d.socket, Array("GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n".utf8)))
        XCTAssertEqual(badVersion.status, 400)

        // Limits: header count and body size.
        var many = "GET /v1/health HTTP/1.1\r\nHost: x\r\n"
        for i in 0..<20 { many += "X-Filler-\(i): y\r\n" }
        let tooMany = parseRaw(try rawExchange(d.socket, Array((many + "Connection: close\r\n\r\n").utf8)))
        XCTAssertEqual(tooMany.status, 431)
        XCTAssertTrue(tooMany.body.contains("header_fields_too_large"), tooMany.body)
        let body = String(repeating: "a", count: 500)
        let tooBig = parseRaw(try rawExchange(d.socket, Array("POST /v1/domains/1/scan HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n\(body)".utf8)))
        XCTAssertEqual(tooBig.status, 413)
        let hugeHeader = parseRaw(try rawExchange(d.socket, Array("GET /v1/health HTTP/1.1\r\nX-Big: \(String(repeating: "b", count: 100_000))\r\n\r\n".utf8)))
        XCTAssertEqual(hugeHeader.status, 431)

        // Keep-alive: two requests on one connection, then the idle limit closes it.
        let start = Date()
        let two = try rawExchange(d.socket, Array("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/domains/1 HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        XCTAssertEqual(two.components(separatedBy: "HTTP/1.1 200 OK").count - 1, 2, two)
        let held = Date().timeIntervalSince(start)
        XCTAssertGreaterThan(held, 0.8)
        XCTAssertLessThan(held, 5, "idle connection not closed by the 1 s idle limit")
    }

    // MARK: - Socket abuse (scripts/abuse.py has the full cases)

    /// Slow-loris: every byte resets the idle limit, so the request-head deadline (from a
    /// request's first byte) must close the connection; a stream whose head arrived is exempt.
    func testRequestHeadDeadlineClosesATricklingClient() throws {
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
            XCTAssertEqual(try d.client.request("GET", "/v1/health").status, 200, "others are served meanwhile")
        }
        let closed = try XCTUnwrap(closedAfter, "a client sending one header byte every 0.3 s was never closed")
        XCTAssertGreaterThan(closed, 1.7, "closed before the 2 s head deadline (\(sent) bytes sent)")
        XCTAssertLessThan(closed, 3.5, "not closed by the 2 s head deadline")

        // The watcher is past both limits and still connected: reading finds data or
        // nothing yet, never end-of-file.
        usleep(useconds_t(max(0, 3 - Date().timeIntervalSince(watchStart)) * 1_000_000))
        var buf = [UInt8](repeating: 0, count: 65536)
        var n: Int
        repeat { n = recv(watch, &buf, buf.count, Int32(MSG_DONTWAIT)) } while n > 0
        XCTAssertTrue(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "the event stream was closed (recv \(n), errno \(errno))")
    }

    /// A body over max_body_bytes is refused as soon as that is known, and the connection
    /// closed, without waiting for (or reading) the rest.
    func testOversizeBodyIsRefusedBeforeItArrives() throws {
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
            XCTAssertEqual(r.status, 413, "\(label): \(r.headers)")
            XCTAssertTrue(r.body.contains("\"code\":\"payload_too_large\""), "\(label): \(r.body)")
            XCTAssertTrue(r.headers.lowercased().contains("connection: close"), "\(label): \(r.headers)")
            XCTAssertLessThan(took, 2, "\(label): 413 and close took \(took) s (idle limit 5 s)")
        }
        XCTAssertEqual(try d.client.request("GET", "/v1/health").status, 200)
    }

    /// Routing splits the still-encoded path: `%2F` is data, not a separator.
    func testEncodedSlashIsNotAPathSeparator() throws {
        let d = try DaemonUnderTest()
        try d.waitReady()
        for (method, path) in [("GET", "/v1/domains/1%2fscan"), ("POST", "/v1/domains/1%2Fscan"), ("GET", "/v1%2fhealth")] {
            let r = try d.client.request(method, path)
            XCTAssertEqual(r.status, 400, "\(method) \(path): \(String(decoding: r.body, as: UTF8.self))")
            XCTAssertEqual(r.apiError?.code, "bad_request", "\(method) \(path)")
        }
        // Other escapes are still decoded, per segment.
        XCTAssertEqual(try d.client.request("GET", "/v1/domains/%31").status, 200)
        XCTAssertEqual(try d.client.request("GET", "/v1/%68ealth").status, 200)
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
        XCTAssertTrue(d.eventually(30) { (try? d.client.request("GET", "/v1/health"))?.status == 200 }, d.log)
        return d
    }

    func testSigtermAnswersAnInFlightScanWith503() throws {
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
        XCTAssertEqual(done.wait(timeout: .now()), .timedOut, "the scan finished before SIGTERM: nothing was in flight")
        let start = Date()
        d.signal(SIGTERM)
        XCTAssertEqual(done.wait(timeout: .now() + 15), .success, "the scan request got no answer")
        XCTAssertNil(box.error, "\(box.error.map { "\($0)" } ?? "")")
        XCTAssertEqual(box.response?.status, 503, box.response.map { String(decoding: $0.body, as: UTF8.self) } ?? "")
        XCTAssertEqual(box.response?.apiError?.code, "unavailable")
        XCTAssertEqual(d.waitExit(timeout: 15), 0, d.log)
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        XCTAssertTrue(d.log.contains("xenp2md stopped"), d.log)
    }

    func testALongScanIsAnsweredPastTheIdleLimit() throws {
        // The idle limit is far shorter than the scan.
        let d = try slowScanDaemon(extraConfig: "http:\n  idle_timeout_seconds: 0.3\n")
        let start = Date()
        let r = try UnixHTTPClient(socketPath: d.socket, timeout: 60).request("POST", "/v1/domains/7/scan?timeout=60")
        let took = Date().timeIntervalSince(start)
        XCTAssertEqual(r.status, 200, String(decoding: r.body, as: UTF8.self))
        XCTAssertGreaterThan(took, 0.6, "the scan took \(took) s, less than two idle limits: this proved nothing")
    }

    // MARK: - Events

    func testBalloonProducesEventsOnTheStream() throws {
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
        XCTAssertTrue(got.lowercased().contains("transfer-encoding: chunked"), got)
        XCTAssertTrue(got.contains("application/x-ndjson"), got)
        XCTAssertTrue(got.contains("\"kind\":\"memory_changed\""), got)

        // And through the CLI.
        let w = try runTool(ctl, ["--socket", d.socket, "watch", "--count", "2", "--json"], timeout: 30)
        XCTAssertEqual(w.status, 0, w.stderr)
        let events = try w.stdout.split(separator: "\n").map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
        XCTAssertEqual(events.count, 2)
        XCTAssertTrue(events.allSatisfy { $0.kind == .memoryChanged && $0.domid == 2 && $0.name == "db-balloon" })
        XCTAssertLessThan(events[0].seq, events[1].seq)
        let human = try runTool(ctl, ["--socket", d.socket, "watch", "--count", "1"], timeout: 30)
        XCTAssertTrue(human.stdout.contains("memory_changed") && human.stdout.contains("db-balloon"), human.stdout)
    }

    func testDomainGoneAndStoppingEvents() throws {
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
        XCTAssertTrue(found, d.log)
        let r = try d.client.request("GET", "/v1/events?since=0&follow=0")
        let events = try String(decoding: r.body, as: UTF8.self).split(separator: "\n").map {
            try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8))
        }
        XCTAssertEqual(events.first { $0.kind == .domainGone }?.domid, 7)
        XCTAssertEqual(try d.client.request("GET", "/v1/domains/7").status, 404)
        XCTAssertEqual(try d.health().domains, 1)
        // Persisted as an incident.
        let log = try String(contentsOfFile: d.stateDir + "/incidents.jsonl", encoding: .utf8)
        XCTAssertTrue(log.contains("\"kind\":\"domain_gone\""))
    }

    // MARK: - Peers

    func testUnprivilegedPeerCannotTriggerScans() throws {
        let dir = try makeTempDir()
        try "socket:\n  mode: \"0666\"\n".write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", dir + "/c.yaml"])
        try d.waitReady()
        var st = stat()
        XCTAssertEqual(stat(d.socket, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o666)
        let setpriv = "/usr/bin/setpriv"
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: setpriv), "setpriv (util-linux) is needed for this test")
        let asNobody = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", ctl!, "--socket", d.socket]
        let read = try runTool(setpriv, asNobody + ["check", "1"])
        XCTAssertEqual(read.status, 0, read.stdout + read.stderr)
        let scan = try runTool(setpriv, asNobody + ["scan", "1"])
        XCTAssertEqual(scan.status, 1)
        XCTAssertTrue(scan.stderr.contains("forbidden"), scan.stderr)
        // Root may.
        XCTAssertEqual(try ctl(d, "scan", "1").status, 0)
    }

    func testDefaultSocketModeIs0660() throws {
        let d = try DaemonUnderTest()
        try d.waitReady()
        var st = stat()
        XCTAssertEqual(stat(d.socket, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o660)
    }

    /// The optional TCP listener serves /metrics on loopback and nothing else.
    func testMetricsTCPListener() throws {
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
        XCTAssertTrue(metrics.stdout.hasSuffix("\n200"), metrics.stdout)
        XCTAssertTrue(metrics.stdout.contains("# TYPE xenp2m_domain_severity_level gauge"), metrics.stdout)
        let other = try runTool("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/v1/domains"])
        XCTAssertEqual(other.stdout, "404", d.log)
    }

    // MARK: - Signals and restarts

    func testSighupReloadsGoodConfigAndKeepsOldOnBrokenOne() throws {
        let dir = try makeTempDir()
        let cfg = dir + "/c.yaml"
        try "poll:\n  interval_seconds: 0.5\n  concurrent_scans: 1\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--config", cfg], pollInterval: nil)
        let h1 = try d.waitReady()
        XCTAssertEqual(h1.pollIntervalSeconds, 0.5)
        XCTAssertEqual(h1.concurrentScans, 1)

        try "poll:\n  interval_seconds: 0.7\n  concurrent_scans: 3\nlog_level: debug\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        d.signal(SIGHUP)
        XCTAssertTrue(try d.eventually { try d.health().configGeneration == h1.configGeneration + 1 }, d.log)
        let h2 = try d.health()
        XCTAssertEqual(h2.pollIntervalSeconds, 0.7)
        XCTAssertEqual(h2.concurrentScans, 3)
        XCTAssertNil(h2.configError)

        try "poll:\n  interval_seconds: 0.9\n  concurrent_scans: many\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        d.signal(SIGHUP)
        XCTAssertTrue(try d.eventually { try d.health().configError != nil }, d.log)
        let h3 = try d.health()
        XCTAssertEqual(h3.configGeneration, h2.configGeneration)
        XCTAssertEqual(h3.pollIntervalSeconds, 0.7, "a broken file must keep the old config")
        XCTAssertTrue(h3.configError?.contains("c.yaml:3: poll.concurrent_scans") ?? false, h3.configError ?? "")
        XCTAssertTrue(d.isRunning)
        XCTAssertTrue(d.log.contains("config rejected, keeping the running config"), d.log)
        // Still serving and polling.
        let polls = h3.polls
        XCTAssertTrue(try d.eventually { try d.health().polls > polls })
    }

    func testSigtermStopsGracefullyAndQuickly() throws {
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
        XCTAssertEqual(status, 0, d.log)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 12)
        XCTAssertFalse(FileManager.default.fileExists(atPath: d.socket), "socket file left behind")
        XCTAssertTrue(d.log.contains("xenp2md stopped"), d.log)
        let watchStatus = waitFor(watcher, timeout: 10)
        if watchStatus == nil { kill(watcher, SIGKILL); _ = waitFor(watcher, timeout: 5) }
        XCTAssertEqual(watchStatus, 0, "watch did not end cleanly when the daemon stopped: " + ((try? String(contentsOfFile: watchOut, encoding: .utf8)) ?? ""))
    }

    func testKill9AndRestartKeepsIncidentLog() throws {
        let dir = try makeTempDir()
        func incidents(_ d: DaemonUnderTest) throws -> [DaemonEvent] {
            let r = try d.client.request("GET", "/v1/events?since=0&follow=0")
            return try String(decoding: r.body, as: UTF8.self).split(separator: "\n")
                .map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
                .filter { $0.kind.isIncident }
        }
        let first = try DaemonUnderTest(dir: dir)
        first.removeOnDeinit = false
        try first.waitReady()
        let before = try incidents(first)
        XCTAssertEqual(Set(before.filter { $0.kind == .domainNew }.map(\.domid)), [1, 2, 3, 4, 5, 6])
        first.signal(SIGKILL)
        XCTAssertNotNil(first.waitExit(timeout: 10))

        let second = try DaemonUnderTest(dir: dir)
        try second.waitReady()
        XCTAssertTrue(second.log.contains("incidents_loaded=\(before.count) "), second.log)
        let after = try incidents(second)
        // Everything reported before the kill is still there, unchanged, and numbering
        // continues after it.
        XCTAssertEqual(Array(after.prefix(before.count)), before)
        let newOnes = after.dropFirst(before.count)
        XCTAssertFalse(newOnes.isEmpty)
        XCTAssertTrue(newOnes.allSatisfy { $0.seq > before.map(\.seq).max()! })
        // The file is valid JSON lines throughout.
        let lines = try String(contentsOfFile: dir + "/state/incidents.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, after.count)
        for l in lines { XCTAssertNoThrow(try APIJSON.decoder().decode(DaemonEvent.self, from: Data(l.utf8))) }
        XCTAssertEqual(try second.health().incidents, UInt64(after.count))
    }

    func testTornIncidentLogLineIsSkipped() throws {
        let dir = try makeTempDir()
        try FileManager.default.createDirectory(atPath: dir + "/state", withIntermediateDirectories: true)
        // Whole seconds: the log's ISO 8601 dates carry no fraction.
        let e = DaemonEvent(seq: 41, time: Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down)), kind: .severityChanged, domid: 9, name: "old", uuid: nil, severity: .critical,
                            previous: "ok", current: "critical", message: "domain 9 (old): ok -> critical")
        var data = try APIJSON.encoder().encode(e)
        data.append(contentsOf: Array("\n{\"seq\":42,\"ti".utf8)) // torn by a crash
        XCTAssertTrue(FileManager.default.createFile(atPath: dir + "/state/incidents.jsonl", contents: data))
        let d = try DaemonUnderTest(dir: dir)
        try d.waitReady()
        let r = try d.client.request("GET", "/v1/events?since=0&follow=0")
        let events = try String(decoding: r.body, as: UTF8.self).split(separator: "\n")
            .map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
        XCTAssertEqual(events.first, e)
        XCTAssertEqual(events.dropFirst().first?.seq, 42)
        XCTAssertTrue(d.log.contains("skipped unreadable lines"), d.log)
    }

    // MARK: - systemd

    func testSocketActivationWithListenFDs() throws {
        let activate = "/usr/bin/systemd-socket-activate"
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: activate), "systemd-socket-activate (package systemd) is needed")
        let dir = try makeTempDir()
        let socket = dir + "/xenp2md.sock"
        // systemd-socket-activate binds the socket, sets LISTEN_FDS/LISTEN_PID and execs the
        // daemon on the first connection, exactly as systemd does for xenp2md.socket.
        let d = try DaemonUnderTest(dir: dir, launcher: [activate, "--listen=\(socket)"], useSocketFlag: false)
        try d.waitReady()
        XCTAssertTrue(d.log.contains("using the socket passed by systemd"), d.log)
        XCTAssertEqual(try d.client.request("GET", "/v1/domains/6").status, 200)
        let check = try runTool(ctl, ["--socket", socket, "check", "1"])
        XCTAssertEqual(check.status, 0, check.stdout)
        d.signal(SIGTERM)
        XCTAssertEqual(d.waitExit(timeout: 15), 0, d.log)
    }

    func testNotifyReadyStatusAndWatchdog() throws {
        let dir = try makeTempDir()
        let notify = dir + "/notify.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(notify.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        XCTAssertEqual(withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }, 0)
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
        XCTAssertTrue(all.contains("READY=1"), all)
        XCTAssertTrue(all.contains("STATUS=6 domains, worst critical (domain 6 broken)"), all)
        XCTAssertGreaterThan(all.components(separatedBy: "WATCHDOG=1").count, 2, all)
        // READY only after the first poll: by then the API knows every domain.
        XCTAssertEqual(try d.health().domains, 6)
        d.signal(SIGTERM)
        XCTAssertEqual(d.waitExit(timeout: 15), 0)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        var tail = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
        while true {
            let m = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if m <= 0 { break }
            tail += String(decoding: buf[0..<m], as: UTF8.self)
        }
        XCTAssertTrue((all + tail).contains("STOPPING=1"), all + tail)
    }

    func testSystemdUnitsVerify() throws {
        let analyze = "/usr/bin/systemd-analyze"
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: analyze), "systemd-analyze is needed")
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let root = Binaries.repoRoot.appendingPathComponent("systemd")
        let service = try String(contentsOf: root.appendingPathComponent("xenp2md.service"), encoding: .utf8)
        XCTAssertTrue(service.contains("Type=notify"))
        XCTAssertTrue(service.contains("DeviceAllow=/dev/xen/privcmd rw"))
        XCTAssertTrue(service.contains("WatchdogSec="))
        // verify needs ExecStart to exist: point it at the built binary.
        let rewritten = service.replacingOccurrences(of: "ExecStart=/usr/sbin/xenp2md", with: "ExecStart=" + (try Binaries.path("xenp2md")))
        XCTAssertNotEqual(rewritten, service)
        try rewritten.write(toFile: dir + "/xenp2md.service", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: root.appendingPathComponent("xenp2md.socket").path, toPath: dir + "/xenp2md.socket")
        let r = try runTool(analyze, ["verify", dir + "/xenp2md.service", dir + "/xenp2md.socket"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines), "", r.stderr)
    }
}

import Foundation
import P2MEngine
import Testing
import XenP2MAPI
#if canImport(Glibc)
import Glibc
#endif

/// The built binaries, next to the test bundle (.build*/<triple>/debug). Missing binaries
/// are a failure, not a skip: these tests exist to run the real programs.
enum Binaries {
    static var directory: URL {
        let exe = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        return exe.deletingLastPathComponent()
    }

    static func path(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let p = directory.appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: p) else {
            Issue.record("\(name) is not built at \(p); run `swift build --scratch-path <same path>` first", sourceLocation: sourceLocation)
            throw HarnessError("missing binary \(p)")
        }
        return p
    }

    static var repoRoot: URL {
        // Tests/XenP2MDaemonTests/Harness.swift -> repository root
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }
}

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Spawns a program with stdout/stderr sent to files (posix_spawn, reaped with waitpid
/// by the tests themselves: Foundation's Process reaper blocks on a child that exec'd
/// through systemd-socket-activate and then never notices other children exit).
func spawn(_ path: String, _ args: [String], env: [String: String], stdout: String, stderr: String) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    // Children start with default signal dispositions and an empty mask, like a service.
    var all = sigset_t()
    sigfillset(&all)
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigdefault(&attr, &all)
    posix_spawnattr_setsigmask(&attr, &none)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, &attr, argv, envp)
    guard rc == 0 else { throw HarnessError("cannot start \(path): \(String(cString: strerror(rc)))") }
    return pid
}

/// Waits for `pid` up to `timeout`; nil if it is still running.
func waitFor(_ pid: pid_t, timeout: Double) -> Int32? {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid {
            // WIFEXITED / WEXITSTATUS, and 128+signal for a signalled child as shells do.
            return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        }
        if r < 0 { return -1 }
        if Date() >= deadline { return nil }
        usleep(20_000)
    }
}

/// Runs a program to completion (with a timeout) and collects its output.
func runTool(_ path: String, _ args: [String], env: [String: String]? = nil, timeout: Double = 60) throws -> RunResult {
    let dir = try makeTempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let pid = try spawn(path, args, env: env ?? ProcessInfo.processInfo.environment, stdout: dir + "/out", stderr: dir + "/err")
    let status = waitFor(pid, timeout: timeout)
    let out = (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: dir + "/err", encoding: .utf8)) ?? ""
    guard let status else {
        kill(pid, SIGKILL)
        _ = waitFor(pid, timeout: 10)
        throw HarnessError("\(path) \(args) did not finish within \(timeout)s; stderr: \(err)")
    }
    return RunResult(status: status, stdout: out, stderr: err)
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A temporary directory removed at the end of the test.
func makeTempDir() throws -> String {
    var template = Array("/tmp/xenp2m-test-XXXXXX".utf8CString)
    guard let p = mkdtemp(&template) else { throw HarnessError("mkdtemp failed") }
    let path = String(cString: p)
    chmod(path, 0o755) // the unprivileged-peer test connects as nobody
    return path
}

/// A running xenp2md on the simulated fleet.
final class DaemonUnderTest {
    let dir: String
    let socket: String
    let stateDir: String
    let logPath: String
    let pid: pid_t
    private(set) var exitStatus: Int32?
    let binary: String
    /// False for a daemon whose state directory a later instance reuses.
    var removeOnDeinit = true

    /// - Parameters:
    ///   - extraArgs: appended after the standard --backend sim --socket --state-dir.
    ///   - launcher: e.g. systemd-socket-activate, with its own arguments; the daemon
    ///     command line follows.
    init(dir: String? = nil, extraArgs: [String] = [], pollInterval: Double? = 0.3, env: [String: String] = [:],
         launcher: [String]? = nil, useSocketFlag: Bool = true) throws {
        self.dir = try dir ?? makeTempDir()
        socket = self.dir + "/xenp2md.sock"
        stateDir = self.dir + "/state"
        logPath = self.dir + "/xenp2md.log"
        binary = try Binaries.path("xenp2md")
        var args = ["--backend", "sim", "--state-dir", stateDir]
        if useSocketFlag { args += ["--socket", socket] }
        if let pollInterval { args += ["--poll-interval", "\(pollInterval)"] }
        args += extraArgs
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "NOTIFY_SOCKET")
        environment.removeValue(forKey: "LISTEN_FDS")
        environment.removeValue(forKey: "LISTEN_PID")
        environment.removeValue(forKey: "WATCHDOG_USEC")
        for (k, v) in env { environment[k] = v }
        let command = (launcher ?? []) + [binary] + args
        pid = try spawn(command[0], Array(command.dropFirst()), env: environment, stdout: logPath, stderr: logPath)
    }

    var client: UnixHTTPClient { UnixHTTPClient(socketPath: socket, timeout: 30) }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits until the first poll completed (health says "ok").
    @discardableResult
    func waitReady(timeout: Double = 60) throws -> HealthStatus {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            guard isRunning else { throw HarnessError("xenp2md exited (\(exitStatus ?? -1)) before ready:\n\(log)") }
            if let r = try? client.request("GET", "/v1/health"), r.status == 200,
               let h = try? APIJSON.decoder().decode(HealthStatus.self, from: r.body), h.status == "ok" {
                return h
            }
            usleep(50_000)
        }
        throw HarnessError("xenp2md not ready within \(timeout)s:\n\(log)")
    }

    func health() throws -> HealthStatus {
        let r = try client.request("GET", "/v1/health")
        return try APIJSON.decoder().decode(HealthStatus.self, from: r.body)
    }

    func signal(_ sig: Int32) { kill(pid, sig) }

    var isRunning: Bool {
        if exitStatus != nil { return false }
        exitStatus = waitFor(pid, timeout: 0)
        return exitStatus == nil
    }

    /// Waits for exit; returns the status or nil on timeout.
    func waitExit(timeout: Double) -> Int32? {
        if let s = exitStatus { return s }
        exitStatus = waitFor(pid, timeout: timeout)
        return exitStatus
    }

    /// Polls `condition` until true or the timeout passes.
    func eventually(_ timeout: Double = 20, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return true }
            usleep(50_000)
        }
        return false
    }

    deinit {
        if isRunning {
            kill(pid, SIGKILL)
            _ = waitExit(timeout: 10)
        }
        if removeOnDeinit { try? FileManager.default.removeItem(atPath: dir) }
    }
}

/// Sends raw bytes on a fresh connection and returns everything the daemon answers
/// until it closes the connection (or `timeout` passes).
func rawExchange(_ socket: String, _ bytes: [UInt8], timeout: Double = 10) throws -> String {
    let fd = try UnixHTTPClient(socketPath: socket).connect()
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    try writeAll(fd, bytes)
    var out = Data()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        out.append(contentsOf: buf[0..<n])
    }
    return String(decoding: out, as: UTF8.self)
}

/// Status code and JSON body of a raw single response.
func parseRaw(_ text: String) -> (status: Int, headers: String, body: String) {
    guard let split = text.range(of: "\r\n\r\n") else { return (0, text, "") }
    let head = String(text[..<split.lowerBound])
    let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
    return (status, head, String(text[split.upperBound...]))
}

// MARK: - Degraded states (HostFaultTests)

extension DaemonUnderTest {
    /// Waits until the first poll completed, whatever it found: unlike `waitReady`, a
    /// "degraded" daemon counts.
    @discardableResult
    func waitPolled(timeout: Double = 60) throws -> HealthStatus {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            guard isRunning else { throw HarnessError("xenp2md exited (\(exitStatus ?? -1)) before its first poll:\n\(log)") }
            if let h = try? health(), h.polls > 0 { return h }
            usleep(50_000)
        }
        throw HarnessError("xenp2md did not finish a poll within \(timeout)s:\n\(log)")
    }

    /// Every event the daemon keeps (incident log and this run), oldest first.
    func events() throws -> [DaemonEvent] {
        let r = try client.request("GET", "/v1/events?since=0&follow=0")
        return try String(decoding: r.body, as: UTF8.self).split(separator: "\n")
            .map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
    }

    func summaries() throws -> [DomainSummary] {
        try APIJSON.decoder().decode([DomainSummary].self, from: client.request("GET", "/v1/domains").body)
    }
}

/// The records of an incidents.jsonl; fails on any line that is not an event.
func incidentLogEvents(_ path: String) throws -> [DaemonEvent] {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    return try text.split(separator: "\n").map { try APIJSON.decoder().decode(DaemonEvent.self, from: Data($0.utf8)) }
}

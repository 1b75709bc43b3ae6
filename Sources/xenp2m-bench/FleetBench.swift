import Foundation
import P2MEngine
import XenP2MAPI

/// Item 4: the real daemon on a large simulated fleet. It is started as a child process
/// (the binary an operator runs), its CPU time is read from /proc between polls, and 50
/// client threads hammer GET /v1/domains over the Unix socket while a poll runs.
struct FleetBench {
    var daemon: String
    var guests: Int
    var totalGiB: UInt64
    var clients: Int
    var cycles: Int

    func run() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("xenp2m-fleet-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let perGuestMiB = max(64, (totalGiB << 10) / UInt64(guests))
        var yaml = "host:\n  memory_gib: \(totalGiB + totalGiB / 64 + 4)\ndomains:\n"
        for d in 1...guests {
            yaml += "  - {domid: \(d), name: g\(d), memory_mib: \(perGuestMiB)}\n"
        }
        let scenario = dir.appendingPathComponent("fleet.yaml").path
        try yaml.write(toFile: scenario, atomically: true, encoding: .utf8)
        let socket = dir.appendingPathComponent("s.sock").path

        print("\n## 4. daemon on a fleet: \(guests) guests x \(perGuestMiB) MiB (\(totalGiB) GiB populated), unlimited scan budget")
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: daemon)
        // Polls back to back (interval 1 s) so several cycles fit in a short run; the
        // CPU cost per cycle does not depend on the interval.
        let config = dir.appendingPathComponent("xenp2md.yaml").path
        try "poll:\n  interval_seconds: 1\n  jitter_seconds: 0\n  budget_frames_per_second: 0\nlog_level: warning\n"
            .write(toFile: config, atomically: true, encoding: .utf8)
        proc.arguments = ["--backend", "sim", "--scenario", scenario, "--socket", socket, "--state-dir", dir.path, "--config", config]
        proc.standardOutput = FileHandle.nullDevice
        try proc.run()
        defer { proc.terminate(); proc.waitUntilExit() }
        let client = UnixHTTPClient(socketPath: socket, timeout: 120)
        let clock = ContinuousClock()
        let t0 = clock.now

        func health() -> HealthStatus? {
            guard let r = try? client.request("GET", "/v1/health"), r.status == 200 else { return nil }
            return try? APIJSON.decoder().decode(HealthStatus.self, from: r.body)
        }
        var h = health()
        while h?.polls ?? 0 < 1 {
            guard proc.isRunning else { throw BenchError("xenp2md exited during start-up (status \(proc.terminationStatus))") }
            guard clock.now - t0 < .seconds(1800) else { throw BenchError("no first poll within 30 minutes") }
            Thread.sleep(forTimeInterval: 0.5)
            h = health()
        }
        print("start-up (build fleet + first poll): \(f(ns(clock.now - t0) / 1e9)) s, RSS \(mib(procRSS(proc.processIdentifier)))")

        // CPU per cycle: utime+stime of the daemon across whole polls.
        let startPolls = h!.polls
        let cpu0 = procCPUSeconds(proc.processIdentifier)
        var durations: [Double] = []
        var lastPolls = startPolls
        while lastPolls < startPolls + UInt64(cycles) {
            Thread.sleep(forTimeInterval: 0.2)
            guard let now = health() else { continue }
            if now.polls > lastPolls, let d = now.lastPollDurationMs { durations.append(d) }
            lastPolls = now.polls
        }
        let cpu = (procCPUSeconds(proc.processIdentifier) - cpu0) / Double(lastPolls - startPolls)
        print("CPU per poll cycle: \(f(cpu)) CPU-s (goal at a 60 s interval: <= 0.60); poll durations ms: \(durations.map { f($0) }.joined(separator: ", "))")
        print("daemon RSS: \(mib(procRSS(proc.processIdentifier))) (includes the simulated host's memory)")

        // Latency: `clients` threads, each on its own keep-alive connection (as wrk or
        // any HTTP load tool would), issuing GET /v1/domains back to back for a while
        // that spans at least one poll.
        final class Tally: @unchecked Sendable {
            let lock = NSLock()
            var samples: [Double] = []
            var failures = 0
        }
        let tally = Tally()
        let until = clock.now + .seconds(max(3, Int((durations.max() ?? 1000) / 1000) + 2))
        let group = DispatchGroup()
        for _ in 0..<clients {
            group.enter()
            Thread.detachNewThread {
                var mine: [Double] = []
                var bad = 0
                if let fd = try? client.connect() {
                    var conn = KeepAliveConnection(fd: fd)
                    while clock.now < until {
                        let s = clock.now
                        if conn.get("/v1/domains") == 200 { mine.append(ns(clock.now - s) / 1e6) } else { bad += 1; break }
                    }
                    close(fd)
                } else {
                    bad += 1
                }
                tally.lock.lock()
                tally.samples += mine
                tally.failures += bad
                tally.lock.unlock()
                group.leave()
            }
        }
        group.wait()
        let samples = tally.samples.sorted()
        let failures = tally.failures
        func pct(_ p: Double) -> Double { samples.isEmpty ? .nan : samples[min(samples.count - 1, Int(Double(samples.count) * p))] }
        print("GET /v1/domains with \(clients) concurrent keep-alive clients during polls: \(samples.count) requests, \(failures) failed, p50 \(f(pct(0.5))) ms, p99 \(f(pct(0.99))) ms (goal p99 < 5 ms)")
    }
}

/// Requests on one persistent connection; just enough HTTP/1.1 for the daemon's
/// Content-Length answers.
struct KeepAliveConnection {
    let fd: Int32
    var buffer = [UInt8]()

    init(fd: Int32) { self.fd = fd }

    /// Returns the status, or nil when the connection failed.
    mutating func get(_ path: String) -> Int? {
        let req = Array("GET \(path) HTTP/1.1\r\nHost: bench\r\n\r\n".utf8)
        guard req.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == req.count else { return nil }
        var chunk = [UInt8](repeating: 0, count: 65536)
        func fill() -> Bool {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return false }
            buffer += chunk[0..<n]
            return true
        }
        let crlf2: [UInt8] = [13, 10, 13, 10]
        var headEnd: Int?
        while headEnd == nil {
            if buffer.count >= 4 {
                for i in 0...(buffer.count - 4) where buffer[i] == 13 && Array(buffer[i..<(i + 4)]) == crlf2 {
                    headEnd = i + 4
                    break
                }
            }
            if headEnd == nil && !fill() { return nil }
        }
        let head = String(decoding: buffer[0..<headEnd!], as: UTF8.self)
        let lines = head.split(separator: "\r\n")
        guard let statusLine = lines.first, let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") else { return nil }
        var length = 0
        for l in lines.dropFirst() where l.lowercased().hasPrefix("content-length:") {
            length = Int(l.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        while buffer.count < headEnd! + length { if !fill() { return nil } }
        buffer.removeFirst(headEnd! + length)
        return status
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

func procCPUSeconds(_ pid: Int32) -> Double {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = s.lastIndex(of: ")") else { return 0 }
    let fields = s[s.index(after: close)...].split(separator: " ")
    // After the command: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    guard fields.count > 13, let u = Double(fields[11]), let k = Double(fields[12]) else { return 0 }
    return (u + k) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

func procRSS(_ pid: Int32) -> UInt64 {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return (UInt64(line.filter(\.isNumber)) ?? 0) * 1024
    }
    return 0
}

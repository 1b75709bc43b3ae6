import Foundation
import Logging
import P2MConfig
import XenP2MAPI

public enum BackendKind: String, Sendable, Equatable, CaseIterable {
    case xen
    case sim
}

/// Everything xenp2md can be told. Defaults are the documented ones of
/// config/xenp2md.yaml (a test keeps the two in step).
public struct DaemonConfig: Sendable, Equatable {
    public var backend: BackendKind = .xen
    /// Sim backend only: a scenario file; nil = the built-in demo fleet.
    public var scenario: String?

    public var pollIntervalSeconds: Double = 30
    /// Each cycle waits interval ± a random share of this, so many hosts polling the
    /// same storage or hypervisor do not fall into lockstep.
    public var pollJitterSeconds: Double = 3
    public var concurrentScans: Int = 2
    /// Nice value of the scan threads: the socket API and the rest of dom0 get the CPU
    /// first when it is contended. 0 = the daemon's own priority.
    public var scanNice: Int = 10
    /// Frames mapped per second over all scans; 0 = unlimited.
    public var scanBudgetFramesPerSecond: Double = 250_000
    public var scanTimeoutSeconds: Double = 30
    public var historyLength: Int = 10
    public var probeDataFrames: Bool = false
    public var sampleLimit: Int = 16
    /// Frames per foreign-map call for P2M leaves.
    public var batchFrames: Int = 256
    /// Every entry is verified against the M2P at least this often; polls in between
    /// check per entry only the leaves that changed or had findings (every leaf is still
    /// read each poll, so any change to a P2M is seen at the next poll). 0 = every poll
    /// verifies every entry. See README "Detection latency".
    public var fullVerifySeconds: Double = 600

    /// Polls over which one full verification is spread: the longest gap between two
    /// polls is interval + jitter, so N such gaps fit in `fullVerifySeconds`.
    public var verifyPeriodPolls: Int {
        guard fullVerifySeconds > 0 else { return 1 }
        return max(1, Int(fullVerifySeconds / (pollIntervalSeconds + pollJitterSeconds)))
    }

    public var socketPath: String = defaultSocketPath
    public var socketMode: UInt32 = 0o660
    /// Group owning the socket and allowed to trigger scans; nil = the daemon's group.
    public var socketGroup: String?

    /// Optional TCP listener for GET /metrics only; off unless a port is set.
    public var metricsPort: Int?
    public var metricsAddress: String = "127.0.0.1"

    public var stateDir: String = "/var/lib/xenp2m"
    public var logLevel: Logger.Level = .info

    public var maxRequestBodyBytes: Int = 4096
    public var maxHeaderCount: Int = 64
    public var idleTimeoutSeconds: Double = 30
    /// A request head (request line and headers) must be complete this long after its
    /// first byte arrived, or the connection is closed (slow-loris clients).
    public var requestHeadTimeoutSeconds: Double = 10
    /// A request body must be complete this long after its head, or the answer is 408
    /// (a client trickling a body keeps resetting the idle limit).
    public var requestBodyTimeoutSeconds: Double = 10
    /// Open connections per listener, event streams not counted; one more is answered
    /// 503 with Retry-After and closed.
    public var maxConnections: Int = 256
    /// Event streams following at once per listener; one more is answered 503.
    public var maxEventStreams: Int = 64

    public init() {}

    /// Reads a config file. Every error names the file, line and key.
    public static func load(path: String) throws(ConfigError) -> DaemonConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: path, line: nil, key: nil, message: "cannot read: \((error as NSError).localizedDescription)")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(ConfigError) -> DaemonConfig {
        var c = DaemonConfig()
        let y = try YAMLMap.parse(text, file: file)
        try y.allowOnly(["backend", "scenario", "poll", "socket", "metrics", "state_dir", "log_level", "http"])
        if let b = try y.string("backend", oneOf: BackendKind.allCases.map(\.rawValue)) { c.backend = BackendKind(rawValue: b)! }
        if let s = try y.string("scenario"), !s.isEmpty { c.scenario = s }
        if let s = try y.string("state_dir") {
            guard s.hasPrefix("/") else { throw y.error("state_dir", "must be an absolute path") }
            c.stateDir = s
        }
        if let l = try y.string("log_level", oneOf: Logger.Level.allCases.map(\.rawValue)) { c.logLevel = Logger.Level(rawValue: l)! }

        if let p = try y.map("poll") {
            try p.allowOnly(["interval_seconds", "jitter_seconds", "concurrent_scans", "budget_frames_per_second",
                             "scan_timeout_seconds", "history", "probe_data_frames", "sample_limit", "batch_frames",
                             "scan_nice", "full_verify_seconds"])
            if let v = try p.double("interval_seconds") {
                guard v >= 0.1 && v <= 86400 else { throw p.error("interval_seconds", "must be between 0.1 and 86400") }
                c.pollIntervalSeconds = v
            }
            if let v = try p.double("jitter_seconds") {
                guard v >= 0 else { throw p.error("jitter_seconds", "must not be negative") }
                c.pollJitterSeconds = v
            }
            if let v = try p.uint("concurrent_scans", max: 64) {
                guard v >= 1 else { throw p.error("concurrent_scans", "must be at least 1") }
                c.concurrentScans = Int(v)
            }
            if let v = try p.uint("scan_nice", max: 19) { c.scanNice = Int(v) }
            if let v = try p.double("budget_frames_per_second") {
                guard v >= 0 else { throw p.error("budget_frames_per_second", "must not be negative (0 = unlimited)") }
                c.scanBudgetFramesPerSecond = v
            }
            if let v = try p.double("scan_timeout_seconds") {
                guard v > 0 && v <= 3600 else { throw p.error("scan_timeout_seconds", "must be between 0 and 3600") }
                c.scanTimeoutSeconds = v
            }
            if let v = try p.uint("history", max: 1000) {
                guard v >= 1 else { throw p.error("history", "must be at least 1") }
                c.historyLength = Int(v)
            }
            if let v = try p.bool("probe_data_frames") { c.probeDataFrames = v }
            if let v = try p.uint("sample_limit", max: 10000) { c.sampleLimit = Int(v) }
            if let v = try p.uint("batch_frames", max: 65536) {
                guard v >= 1 else { throw p.error("batch_frames", "must be at least 1") }
                c.batchFrames = Int(v)
            }
            if let v = try p.double("full_verify_seconds") {
                guard v >= 0 && v <= 7 * 86400 else { throw p.error("full_verify_seconds", "must be between 0 (every poll) and 604800") }
                c.fullVerifySeconds = v
            }
        }
        if let s = try y.map("socket") {
            try s.allowOnly(["path", "mode", "group"])
            if let v = try s.string("path") {
                guard v.hasPrefix("/") else { throw s.error("path", "must be an absolute path") }
                guard v.utf8.count < 108 else { throw s.error("path", "longer than the 107 bytes a Unix socket path may have") }
                c.socketPath = v
            }
            if let v = try s.string("mode") {
                guard let m = UInt32(v, radix: 8), m <= 0o777 else { throw s.error("mode", "'\(v)' is not an octal file mode like 0660") }
                c.socketMode = m
            }
            if let v = try s.string("group"), !v.isEmpty {
                guard groupID(v) != nil else { throw s.error("group", "no such group '\(v)' on this host") }
                c.socketGroup = v
            }
        }
        if let m = try y.map("metrics") {
            try m.allowOnly(["port", "address"])
            if let v = try m.uint("port", max: 65535) { c.metricsPort = v == 0 ? nil : Int(v) }
            if let v = try m.string("address") {
                guard isIPAddress(v) else { throw m.error("address", "'\(v)' is not an IPv4 or IPv6 address") }
                c.metricsAddress = v
            }
        }
        if let h = try y.map("http") {
            try h.allowOnly(["max_body_bytes", "max_headers", "idle_timeout_seconds", "request_head_timeout_seconds",
                             "request_body_timeout_seconds", "max_connections", "max_event_streams"])
            if let v = try h.uint("max_body_bytes", max: 1 << 20) { c.maxRequestBodyBytes = Int(v) }
            if let v = try h.uint("max_headers", max: 1000) {
                guard v >= 4 else { throw h.error("max_headers", "must be at least 4") }
                c.maxHeaderCount = Int(v)
            }
            if let v = try h.double("idle_timeout_seconds") {
                guard v >= 0.1 else { throw h.error("idle_timeout_seconds", "must be at least 0.1") }
                c.idleTimeoutSeconds = v
            }
            if let v = try h.double("request_head_timeout_seconds") {
                guard v >= 0.1 else { throw h.error("request_head_timeout_seconds", "must be at least 0.1") }
                c.requestHeadTimeoutSeconds = v
            }
            if let v = try h.double("request_body_timeout_seconds") {
                guard v >= 0.1 else { throw h.error("request_body_timeout_seconds", "must be at least 0.1") }
                c.requestBodyTimeoutSeconds = v
            }
            if let v = try h.uint("max_connections", max: 100_000) {
                guard v >= 1 else { throw h.error("max_connections", "must be at least 1") }
                c.maxConnections = Int(v)
            }
            if let v = try h.uint("max_event_streams", max: 100_000) {
                guard v >= 1 else { throw h.error("max_event_streams", "must be at least 1") }
                c.maxEventStreams = Int(v)
            }
        }
        return c
    }

    /// Settings that take effect only on restart (sockets, store and backend are opened once).
    func restartOnlyDifferences(from other: DaemonConfig) -> [String] {
        var d: [String] = []
        if backend != other.backend { d.append("backend") }
        if scenario != other.scenario { d.append("scenario") }
        if socketPath != other.socketPath { d.append("socket.path") }
        if socketMode != other.socketMode { d.append("socket.mode") }
        if metricsPort != other.metricsPort || metricsAddress != other.metricsAddress { d.append("metrics") }
        if stateDir != other.stateDir { d.append("state_dir") }
        return d
    }

    /// Keeps this config's restart-only settings and takes the reloadable ones from `new`.
    func reloaded(with new: DaemonConfig) -> DaemonConfig {
        var c = new
        c.backend = backend
        c.scenario = scenario
        c.socketPath = socketPath
        c.socketMode = socketMode
        c.metricsPort = metricsPort
        c.metricsAddress = metricsAddress
        c.stateDir = stateDir
        // Group decides who may trigger scans: reloadable, the socket's ownership is not.
        return c
    }
}

/// Command-line settings; they win over the config file, also after a reload.
public struct ConfigOverrides: Sendable, Equatable {
    public var backend: BackendKind?
    public var scenario: String?
    public var socketPath: String?
    public var stateDir: String?
    public var logLevel: Logger.Level?
    public var pollIntervalSeconds: Double?

    public init(backend: BackendKind? = nil, scenario: String? = nil, socketPath: String? = nil, stateDir: String? = nil,
                logLevel: Logger.Level? = nil, pollIntervalSeconds: Double? = nil) {
        self.backend = backend
        self.scenario = scenario
        self.socketPath = socketPath
        self.stateDir = stateDir
        self.logLevel = logLevel
        self.pollIntervalSeconds = pollIntervalSeconds
    }

    public func apply(to config: DaemonConfig) -> DaemonConfig {
        var c = config
        if let v = backend { c.backend = v }
        if let v = scenario { c.scenario = v }
        if let v = socketPath { c.socketPath = v }
        if let v = stateDir { c.stateDir = v }
        if let v = logLevel { c.logLevel = v }
        if let v = pollIntervalSeconds { c.pollIntervalSeconds = v }
        return c
    }
}

func groupID(_ name: String) -> gid_t? {
    if let n = UInt32(name) { return n }
    guard let g = getgrnam(name) else { return nil }
    return g.pointee.gr_gid
}

func isIPAddress(_ s: String) -> Bool {
    var v4 = in_addr()
    var v6 = in6_addr()
    return inet_pton(AF_INET, s, &v4) == 1 || inet_pton(AF_INET6, s, &v6) == 1
}

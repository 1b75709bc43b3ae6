import Foundation
import Logging

/// The running configuration: what a SIGHUP reload changes while the daemon runs, and
/// the bookkeeping `GET /v1/health` shows about it (file, generation, last refusal).
/// Read from any thread (the poll loop, API handlers, the reload service).
final class LiveSettings: @unchecked Sendable {
    private let lock = NSLock()
    private var _config: DaemonConfig
    private var _group: gid_t?
    private var _generation = 1
    private var _refusal: String?
    /// The config file in use (nil: built-in defaults and command-line options only).
    let file: String?

    init(_ c: DaemonConfig, group: gid_t?, file: String? = nil) {
        _config = c
        _group = group
        self.file = file
    }

    var config: DaemonConfig {
        lock.lock(); defer { lock.unlock() }
        return _config
    }

    var group: gid_t? {
        get { lock.lock(); defer { lock.unlock() }; return _group }
        set { lock.lock(); _group = newValue; lock.unlock() }
    }

    /// Bumped by every reload that took effect.
    var generation: Int {
        lock.lock(); defer { lock.unlock() }
        return _generation
    }

    /// Why the latest reload was refused, until one succeeds.
    var refusal: String? {
        lock.lock(); defer { lock.unlock() }
        return _refusal
    }

    /// A reload took effect.
    func applied(_ c: DaemonConfig) {
        lock.lock(); defer { lock.unlock() }
        _config = c
        _generation += 1
        _refusal = nil
    }

    /// A reload was refused; the running config stays.
    func refused(_ why: String) {
        lock.lock(); defer { lock.unlock() }
        _refusal = why
    }

    var limits: HTTPLimits {
        let c = config
        return HTTPLimits(maxBodyBytes: c.maxRequestBodyBytes, maxHeaders: c.maxHeaderCount, idleTimeout: c.idleTimeoutSeconds,
                          requestHeadTimeout: c.requestHeadTimeoutSeconds,
                          requestBodyTimeout: c.requestBodyTimeoutSeconds, maxConnections: c.maxConnections,
                          maxEventStreams: c.maxEventStreams)
    }
}

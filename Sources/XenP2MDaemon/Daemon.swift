import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import P2MEngine
import P2MSimulator
import P2MXen
import Prometheus
import ServiceLifecycle
import UnixSignals
import XenP2MAPI

/// A start-up failure with the message an operator should see (no stack trace).
public struct DaemonError: Error, CustomStringConvertible {
    public var message: String
    /// Process exit status: 2 for configuration, 1 for everything else.
    public var exitCode: Int32
    public var description: String { message }
}

/// Values that a SIGHUP reload changes while the daemon runs.
final class LiveSettings: @unchecked Sendable {
    private let lock = NSLock()
    private var _config: DaemonConfig
    private var _group: gid_t?

    init(_ c: DaemonConfig, group: gid_t?) {
        _config = c
        _group = group
    }

    var config: DaemonConfig {
        get { lock.lock(); defer { lock.unlock() }; return _config }
        set { lock.lock(); _config = newValue; lock.unlock() }
    }

    var group: gid_t? {
        get { lock.lock(); defer { lock.unlock() }; return _group }
        set { lock.lock(); _group = newValue; lock.unlock() }
    }

    var limits: HTTPLimits {
        let c = config
        return HTTPLimits(maxBodyBytes: c.maxRequestBodyBytes, maxHeaders: c.maxHeaderCount, idleTimeout: c.idleTimeoutSeconds,
                          requestHeadTimeout: c.requestHeadTimeoutSeconds)
    }
}

/// A log level shared by every logger of the process, so a reload changes it everywhere.
public final class LogLevelBox: @unchecked Sendable {
    public static let shared = LogLevelBox()
    private let lock = NSLock()
    private var level: Logger.Level = .info

    public var value: Logger.Level {
        get { lock.lock(); defer { lock.unlock() }; return level }
        set { lock.lock(); level = newValue; lock.unlock() }
    }
}

/// stderr logging (journald adds time and unit) whose level follows `LogLevelBox`.
public struct DaemonLogHandler: LogHandler {
    private var inner: StreamLogHandler
    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }
    public var logLevel: Logger.Level {
        get { LogLevelBox.shared.value }
        set { LogLevelBox.shared.value = newValue }
    }

    public init(label: String) { inner = StreamLogHandler.standardError(label: label) }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) { inner.log(event: event) }
}

/// The scan target and, for the simulator, the step that makes its fleet move.
struct Backend {
    var host: any P2MHost
    var tick: (@Sendable () throws -> [DomID])?

    static func open(_ c: DaemonConfig, logger: Logger) throws(DaemonError) -> Backend {
        switch c.backend {
        case .sim:
            do {
                let fleet: SimulatedFleet
                if let path = c.scenario {
                    fleet = try SimulatedFleet(Scenario.load(path: path))
                } else {
                    fleet = try SimulatedFleet.demo()
                }
                return Backend(host: fleet.host, tick: { try fleet.tick() })
            } catch let e as ConfigError {
                throw DaemonError(message: "scenario: \(e)", exitCode: 2)
            } catch {
                throw DaemonError(message: "cannot build the simulated fleet: \(error)", exitCode: 1)
            }
        case .xen:
            do throws(HostError) {
                return Backend(host: try XenHost.open(logger: logger), tick: nil)
            } catch {
                throw DaemonError(message: "\(error)", exitCode: 1)
            }
        }
    }
}

public enum Daemon {
    /// Loads the config file (if any) and applies the command-line overrides.
    public static func configuration(file: String?, overrides: ConfigOverrides) throws(DaemonError) -> DaemonConfig {
        var c = DaemonConfig()
        if let file {
            do throws(ConfigError) {
                c = try DaemonConfig.load(path: file)
            } catch {
                throw DaemonError(message: "config: \(error)", exitCode: 2)
            }
        }
        return overrides.apply(to: c)
    }

    /// `--once`: scans every domain once and returns the reports (no socket, no state).
    public static func scanOnce(_ c: DaemonConfig, logger: Logger) throws(DaemonError) -> [P2MReport] {
        let backend = try Backend.open(c, logger: logger)
        let scanner = P2MScanner(host: backend.host, options: Monitor.scanOptions(c))
        let infos: [DomainInfo]
        do throws(HostError) {
            infos = try backend.host.listDomains()
        } catch {
            throw DaemonError(message: "cannot list domains: \(error)", exitCode: 1)
        }
        return infos.map { scanner.scan($0.domid) }
    }

    /// Runs the service until SIGTERM/SIGINT. Returns when it stopped cleanly.
    public static func run(configFile: String?, overrides: ConfigOverrides, logger: Logger) async throws(DaemonError) {
        // Until the reload handler is installed, a SIGHUP must not kill the daemon.
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        let config = try configuration(file: configFile, overrides: overrides)
        LogLevelBox.shared.value = config.logLevel

        let activated = takeActivatedSocket()
        if activated == nil {
            let dir = (config.socketPath as NSString).deletingLastPathComponent
            do {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            } catch {
                throw DaemonError(message: "cannot create socket directory \(dir): \(error.localizedDescription)", exitCode: 1)
            }
        }
        let log: IncidentLog
        do {
            log = try IncidentLog(directory: config.stateDir, logger: logger)
        } catch {
            throw DaemonError(message: "state directory \(config.stateDir): \(error)", exitCode: 1)
        }
        let backend = try Backend.open(config, logger: logger)

        let registry = PrometheusCollectorRegistry()
        let factory = PrometheusMetricsFactory(registry: registry)
        MetricsSystem.bootstrap(factory)
        let metrics = DaemonMetrics(registry: registry, factory: factory)
        let hub = EventHub(log: log)
        let monitor = Monitor(host: backend.host, tick: backend.tick, config: config, hub: hub, metrics: metrics, logger: logger)
        await monitor.setConfigFile(configFile)

        var group: gid_t? = config.socketGroup.flatMap(groupID)
        let listener: Listener
        if let fd = activated {
            listener = .activated(fd)
            if group == nil, let path = boundPath(of: fd) {
                var st = stat()
                if stat(path, &st) == 0 { group = st.st_gid }
            }
            logger.info("using the socket passed by systemd", metadata: ["path": "\(boundPath(of: fd) ?? "?")"])
        } else {
            listener = .unixPath(config.socketPath, mode: config.socketMode, group: group)
        }
        if group == nil { group = getegid() }
        let live = LiveSettings(config, group: group)
        let api = API(monitor: monitor, hub: hub, metrics: metrics, controlGroup: { live.group })
        // One thread serves the API: requests are small, scans run elsewhere. It lives
        // as long as the process, which ends right after the services stop.
        let elg = MultiThreadedEventLoopGroup.singleton

        var services: [any Service] = []
        let server = APIServer(listener: listener, api: api, limits: { live.limits }, group: elg, logger: logger)
        do {
            server.server = try await server.bind()
        } catch {
            throw DaemonError(message: "cannot listen on \(config.socketPath): \(error)", exitCode: 1)
        }
        services.append(server)
        if let port = config.metricsPort {
            let tcp = APIServer(listener: .tcp(host: config.metricsAddress, port: port), api: api, limits: { live.limits },
                                group: elg, logger: logger, metricsOnly: true)
            do {
                tcp.server = try await tcp.bind()
            } catch {
                throw DaemonError(message: "cannot listen for metrics on \(config.metricsAddress):\(port): \(error)", exitCode: 1)
            }
            services.append(tcp)
        }
        let notifier = SystemdNotifier()
        services.append(PollService(monitor: monitor, notifier: notifier, hub: hub, logger: logger))
        services.append(ReloadService(file: configFile, overrides: overrides, live: live, monitor: monitor, metrics: metrics,
                                      notifier: notifier, logger: logger))
        if let interval = notifier.watchdogInterval {
            services.append(WatchdogService(monitor: monitor, notifier: notifier, timeout: interval))
        }
        logger.info("xenp2md starting", metadata: [
            "backend": "\(backend.host.backendName)", "socket": "\(config.socketPath)", "state_dir": "\(config.stateDir)",
            "incidents_loaded": "\(log.loaded.count)",
        ])

        var sg = ServiceGroupConfiguration(services: services.map { .init(service: $0) },
                                           gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // The bound of a graceful stop; after it, remaining work is cancelled (systemd's
        // TimeoutStopSec is larger, so it never has to SIGKILL us).
        sg.maximumGracefulShutdownDuration = .seconds(10)
        sg.maximumCancellationDuration = .seconds(5)
        do {
            try await ServiceGroup(configuration: sg).run()
        } catch {
            throw DaemonError(message: "stopped on error: \(error)", exitCode: 1)
        }
        if !log.retry() {
            let st = log.status()
            logger.error("incident log: incidents held in memory are lost: the log is still not writable", metadata: [
                "path": "\(st.path)", "events": "\(st.unpersistedEvents)", "error": "\(st.lastError ?? "")",
            ])
        }
        let polls = await monitor.polls
        logger.info("xenp2md stopped", metadata: ["polls": "\(polls)"])
    }
}

extension Monitor {
    func setConfigFile(_ f: String?) { configFile = f }
}

/// The poll loop, with READY=1 after the first poll and a STATUS= line after each.
struct PollService: Service {
    let monitor: Monitor
    let notifier: SystemdNotifier
    let hub: EventHub
    let logger: Logger

    func run() async throws {
        notifier.notify("STATUS=first poll running")
        await withGracefulShutdownHandler {
            await cancelWhenGracefulShutdown { await monitor.poll() }
            guard !Task.isCancelled && !Task.isShuttingDownGracefully else { return }
            let status = await monitor.statusLine()
            notifier.notify("READY=1\nSTATUS=\(status)")
            logger.info("first poll complete", metadata: ["status": "\(status)"])
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                let c = await monitor.config
                // Jitter spreads polls of many hosts; capped at half the interval so a
                // short interval is never turned into back-to-back polls.
                let spread = min(c.pollJitterSeconds, c.pollIntervalSeconds / 2)
                let jitter = spread > 0 ? Double.random(in: -spread...spread) : 0
                let wait = max(0.05, c.pollIntervalSeconds + jitter)
                do {
                    try await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(wait)) }
                } catch {
                    break
                }
                await cancelWhenGracefulShutdown { await monitor.poll() }
                notifier.notify("STATUS=\(await monitor.statusLine())")
            }
        } onGracefulShutdown: {
            notifier.notify("STOPPING=1\nSTATUS=stopping")
            // Ends `watch` streams so their connections finish and the server can stop.
            hub.finishAll()
        }
    }
}

/// SIGHUP: re-read the config; a broken file keeps the running config and says why.
struct ReloadService: Service {
    let file: String?
    let overrides: ConfigOverrides
    let live: LiveSettings
    let monitor: Monitor
    let metrics: DaemonMetrics
    let notifier: SystemdNotifier
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: [.sighup])
        for await _ in signals.cancelOnGracefulShutdown() {
            await reload()
        }
    }

    func reload() async {
        guard let file else {
            logger.notice("SIGHUP: no config file in use (started without --config); nothing to reload")
            return
        }
        let current = live.config
        let loaded: DaemonConfig
        do throws(ConfigError) {
            loaded = try DaemonConfig.load(path: file)
        } catch {
            logger.error("SIGHUP: config rejected, keeping the running config", metadata: ["error": "\(error)"])
            metrics.configReloadFailures.increment()
            await monitor.refuseReload("\(error)")
            notifier.notify("STATUS=config reload failed: \(error)")
            return
        }
        let wanted = overrides.apply(to: loaded)
        let restartOnly = wanted.restartOnlyDifferences(from: current)
        if !restartOnly.isEmpty {
            logger.warning("SIGHUP: these settings change only on restart", metadata: ["keys": "\(restartOnly.joined(separator: ", "))"])
        }
        let next = current.reloaded(with: wanted)
        live.config = next
        if let g = next.socketGroup.flatMap(groupID) { live.group = g }
        LogLevelBox.shared.value = next.logLevel
        await monitor.apply(config: next, file: file)
        metrics.configReloads.increment()
        logger.info("SIGHUP: config reloaded", metadata: [
            "file": "\(file)", "poll_interval_seconds": "\(next.pollIntervalSeconds)",
            "concurrent_scans": "\(next.concurrentScans)", "log_level": "\(next.logLevel)",
        ])
        notifier.notify("STATUS=config reloaded; \(await monitor.statusLine())")
    }
}

/// WATCHDOG=1 at half systemd's interval, but only while the poll loop makes progress:
/// a host call that hangs stops the pings, and systemd restarts the service.
struct WatchdogService: Service {
    let monitor: Monitor
    let notifier: SystemdNotifier
    let timeout: Duration

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let stuck = await monitor.busySince.map { ContinuousClock.now - $0 > timeout } ?? false
            if !stuck { notifier.notify("WATCHDOG=1") }
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: timeout / 2) }
            } catch {
                return
            }
        }
    }
}

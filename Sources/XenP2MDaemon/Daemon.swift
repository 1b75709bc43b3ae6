import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import P2MEngine
import P2MConfig
import Prometheus
import ServiceLifecycle
import XenP2MAPI

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
    public static func scanOnce(_ c: DaemonConfig, backends: BackendOpener, logger: Logger) throws(DaemonError) -> [P2MReport] {
        let backend = try backends(c, logger)
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
    public static func run(configFile: String?, overrides: ConfigOverrides, backends: BackendOpener,
                           logger: Logger) async throws(DaemonError) {
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
        let reservation: SeqReservation
        do {
            log = try IncidentLog(directory: config.stateDir, logger: logger)
            reservation = try SeqReservation(directory: config.stateDir, logger: logger)
        } catch {
            throw DaemonError(message: "state directory \(config.stateDir): \(error)", exitCode: 1)
        }
        let backend = try backends(config, logger)

        let registry = PrometheusCollectorRegistry()
        let factory = PrometheusMetricsFactory(registry: registry)
        MetricsSystem.bootstrap(factory)
        let metrics = DaemonMetrics(registry: registry)
        let hub = EventHub(log: log, reservation: reservation)

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
        let live = LiveSettings(config, group: group, file: configFile)
        let monitor = Monitor(host: backend.host, settings: live, hub: hub, metrics: metrics, logger: logger)
        let api = API(monitor: monitor, hub: hub, metrics: metrics, controlGroup: { live.group })
        // One thread serves the API: requests are small, scans run elsewhere. It lives
        // as long as the process, which ends right after the services stop.
        let elg = MultiThreadedEventLoopGroup.singleton

        // Bound before any service runs, so start-up fails before READY=1.
        var services: [any Service] = []
        do {
            services.append(try await APIServer(listener: listener, api: api, limits: { live.limits }, group: elg, logger: logger).bind())
        } catch {
            throw DaemonError(message: "cannot listen on \(config.socketPath): \(error)", exitCode: 1)
        }
        if let port = config.metricsPort {
            let tcp = APIServer(listener: .tcp(host: config.metricsAddress, port: port), api: api, limits: { live.limits },
                                group: elg, logger: logger, metricsOnly: true)
            do {
                services.append(try await tcp.bind())
            } catch {
                throw DaemonError(message: "cannot listen for metrics on \(config.metricsAddress):\(port): \(error)", exitCode: 1)
            }
        }
        let notifier = SystemdNotifier()
        services.append(PollService(monitor: monitor, notifier: notifier, hub: hub, logger: logger))
        services.append(ReloadService(file: configFile, overrides: overrides, live: live, monitor: monitor, metrics: metrics,
                                      notifier: notifier, logger: logger))
        if let companion = backend.companion { services.append(companion(monitor.pollsFinished, logger)) }
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
        if !hub.retryPersisting(), log.status().unpersistedEvents > 0 {
            let st = log.status()
            logger.error("incident log: incidents held in memory are lost: the log is still not writable", metadata: [
                "path": "\(st.path)", "events": "\(st.unpersistedEvents)", "error": "\(st.lastError ?? "")",
            ])
        }
        let polls = await monitor.polls
        logger.info("xenp2md stopped", metadata: ["polls": "\(polls)"])
    }
}


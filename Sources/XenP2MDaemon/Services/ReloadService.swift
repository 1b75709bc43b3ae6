import Logging
import P2MConfig
import ServiceLifecycle
import UnixSignals

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
            live.refused("\(error)")
            notifier.notify("STATUS=config reload failed: \(error)")
            return
        }
        let wanted = overrides.apply(to: loaded)
        let restartOnly = wanted.restartOnlyDifferences(from: current)
        if !restartOnly.isEmpty {
            logger.warning("SIGHUP: these settings change only on restart", metadata: ["keys": "\(restartOnly.joined(separator: ", "))"])
        }
        let next = current.reloaded(with: wanted)
        live.applied(next)
        if let g = next.socketGroup.flatMap(groupID) { live.group = g }
        LogLevelBox.shared.value = next.logLevel
        await monitor.apply(config: next)
        metrics.configReloads.increment()
        logger.info("SIGHUP: config reloaded", metadata: [
            "file": "\(file)", "poll_interval_seconds": "\(next.pollIntervalSeconds)",
            "concurrent_scans": "\(next.concurrentScans)", "log_level": "\(next.logLevel)",
        ])
        notifier.notify("STATUS=config reloaded; \(await monitor.statusLine())")
    }
}

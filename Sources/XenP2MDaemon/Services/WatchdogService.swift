import ServiceLifecycle

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

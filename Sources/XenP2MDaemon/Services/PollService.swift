import Logging
import ServiceLifecycle

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
                let c = monitor.settings.config
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

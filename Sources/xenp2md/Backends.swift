import Dispatch
import Logging
import P2MConfig
import P2MEngine
import P2MSimulator
import P2MXen
import ServiceLifecycle
import XenP2MDaemon

/// The backends this executable offers: real Xen, or the simulated fleet (`--backend sim`).
/// The daemon library scans whatever host it is given and knows neither.
let backends: BackendOpener = { (c: DaemonConfig, logger: Logger) throws(DaemonError) -> DaemonBackend in
    switch c.backend {
    case .sim:
        let fleet: SimulatedFleet
        do {
            if let path = c.scenario {
                fleet = try SimulatedFleet(Scenario.load(path: path))
            } else {
                fleet = try SimulatedFleet.demo()
            }
        } catch let e as ConfigError {
            throw DaemonError(message: "scenario: \(e)", exitCode: 2)
        } catch {
            throw DaemonError(message: "cannot build the simulated fleet: \(error)", exitCode: 1)
        }
        return DaemonBackend(host: fleet.host) { polls, logger in FleetMotionService(fleet: fleet, polls: polls, logger: logger) }
    case .xen:
        do throws(HostError) {
            let host = try XenHost.open(logger: logger)
            logger.notice("Xen hypervisor \(host.hypervisor); this build speaks \(XenVersion.builtInterface)")
            return DaemonBackend(host: host)
        } catch .noXen(let path) {
            throw DaemonError(message: "\(HostError.noXen(path: path)); use --backend sim to run on the simulated host", exitCode: 1)
        } catch {
            // Exit 3 (README, "Install on a Xen host"): the unit does not restart on it.
            if case .hypervisorNotDrivable = error { throw DaemonError(message: "\(error)", exitCode: 3) }
            throw DaemonError(message: "\(error)", exitCode: 1)
        }
    }
}

/// The simulated fleet's life: after every poll each balloon plan moves one step, so the
/// next poll sees guests that changed (and no scan ever sees a guest mid-step).
struct FleetMotionService: Service {
    let fleet: SimulatedFleet
    let polls: AsyncStream<UInt64>
    let logger: Logger

    func run() async throws {
        for await _ in polls.cancelOnGracefulShutdown() {
            // Ballooning a simulated guest takes real time: off the cooperative pool.
            let fleet = self.fleet
            let failure = await withCheckedContinuation { (c: CheckedContinuation<String?, Never>) in
                DispatchQueue.global(qos: .utility).async {
                    do { _ = try fleet.tick(); c.resume(returning: nil) } catch { c.resume(returning: "\(error)") }
                }
            }
            if let failure {
                logger.warning("simulated fleet could not balloon", metadata: ["error": "\(failure)"])
            }
        }
    }
}

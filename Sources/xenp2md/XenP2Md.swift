import ArgumentParser
import Foundation
import Logging
import P2MEngine
import P2MXen
import XenP2MAPI
import XenP2MDaemon

extension BackendKind: ExpressibleByArgument {}
extension Logger.Level: @retroactive ExpressibleByArgument {}

@main
struct XenP2Md: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenp2md",
        abstract: "Keeps the P2M of every Xen PV guest checked and answers on a Unix socket.",
        discussion: """
            Runs as a service (systemd unit xenp2md.service) or in the foreground:
              xenp2md --backend sim --socket /tmp/xenp2m.sock --state-dir /tmp/xenp2m
            Scan once and print a table instead:
              xenp2md --backend sim --once
            Command-line options override the config file; SIGHUP re-reads it.
            """,
        version: "xenp2md \(XenP2MVersion.string), built for \(XenVersion.builtInterface)")

    @Option(help: "Config file (YAML); see config/xenp2md.yaml. Without it, built-in defaults apply.")
    var config: String?

    @Option(help: "Host backend: xen (a dom0) or sim (the simulated demo fleet).")
    var backend: BackendKind?

    @Option(help: "Simulated fleet scenario (sim backend); default: the built-in demo fleet.")
    var scenario: String?

    @Option(help: "Unix socket of the API.")
    var socket: String?

    @Option(name: .customLong("state-dir"), help: "Directory for the incident log.")
    var stateDir: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level?

    @Option(name: .customLong("poll-interval"), help: "Seconds between polls.")
    var pollInterval: Double?

    @Flag(help: "Scan every domain once, print a summary and exit (no socket, no state).")
    var once = false

    @Flag(help: "With --once: print the JSON array of reports instead of the table.")
    var json = false

    func validate() throws {
        if json && !once { throw ValidationError("--json only applies with --once") }
        if let p = pollInterval, !(p >= 0.1 && p <= 86400) { throw ValidationError("--poll-interval must be between 0.1 and 86400 seconds") }
    }

    func run() async throws {
        LoggingSystem.bootstrap { DaemonLogHandler(label: $0) }
        let logger = Logger(label: "xenp2md")
        let overrides = ConfigOverrides(backend: backend, scenario: scenario, socketPath: socket, stateDir: stateDir,
                                        logLevel: logLevel, pollIntervalSeconds: pollInterval)
        do throws(DaemonError) {
            if once {
                let c = try Daemon.configuration(file: config, overrides: overrides)
                LogLevelBox.shared.value = c.logLevel
                let reports = try Daemon.scanOnce(c, backends: backends, logger: logger)
                if json {
                    let data = (try? P2MReport.encoder().encode(reports)) ?? Data()
                    FileHandle.standardOutput.write(data + Data("\n".utf8))
                } else {
                    print(Render.summaries(reports.map { DomainSummary(report: $0, state: .running) }), terminator: "")
                }
                return
            }
            try await Daemon.run(configFile: config, overrides: overrides, backends: backends, logger: logger)
        } catch {
            FileHandle.standardError.write(Data("xenp2md: \(error.message)\n".utf8))
            throw ExitCode(error.exitCode)
        }
    }
}

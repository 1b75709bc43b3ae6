import Logging
import P2MEngine
import ServiceLifecycle

/// The host the daemon scans, handed in by the executable: this library knows no backend
/// (real Xen, the simulator), only `P2MHost`.
public struct DaemonBackend: Sendable {
    public var host: any P2MHost
    /// Work the backend does beside the poll loop, as a service of its own (the simulated
    /// fleet moves between polls). It gets the numbers of finished polls as they finish.
    public var companion: (@Sendable (_ pollsFinished: AsyncStream<UInt64>, _ logger: Logger) -> any Service)?

    public init(host: any P2MHost,
                companion: (@Sendable (_ pollsFinished: AsyncStream<UInt64>, _ logger: Logger) -> any Service)? = nil) {
        self.host = host
        self.companion = companion
    }
}

/// Opens the backend a configuration asks for (`backend:` and, for the simulator,
/// `scenario:`). Failures carry the message and exit status for the operator.
public typealias BackendOpener = @Sendable (DaemonConfig, Logger) throws(DaemonError) -> DaemonBackend

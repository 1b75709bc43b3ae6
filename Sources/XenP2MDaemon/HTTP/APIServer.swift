import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import XenP2MAPI

/// The socket API: HTTP/1.1 + JSON on SwiftNIO. One per listener: `bind()` gives the
/// bound server, a service that runs until graceful shutdown.
struct APIServer: Sendable {
    let listener: Listener
    let api: API
    let limits: @Sendable () -> HTTPLimits
    let group: MultiThreadedEventLoopGroup
    let logger: Logger
    let metricsOnly: Bool

    init(listener: Listener, api: API, limits: @escaping @Sendable () -> HTTPLimits, group: MultiThreadedEventLoopGroup,
         logger: Logger, metricsOnly: Bool = false) {
        self.listener = listener
        self.api = api
        self.limits = limits
        self.group = group
        self.logger = logger
        self.metricsOnly = metricsOnly
    }

    /// Binds the listener. Separate from running it, so start-up can fail before READY=1.
    func bind() async throws -> BoundAPIServer {
        BoundAPIServer(server: self, channel: try await bindChannel())
    }

    private func bindChannel() async throws -> NIOAsyncChannel<(HTTPConnection, PeerCredentials?), Never> {
        let limits = self.limits
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 128)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        let initializer: @Sendable (Channel) -> EventLoopFuture<(HTTPConnection, PeerCredentials?)> = { channel in
            let creds: EventLoopFuture<PeerCredentials?>
            if let provider = channel as? SocketOptionProvider, case .unixDomainSocket = channel.localAddress {
                creds = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
                    .map { (c: UCred) -> PeerCredentials? in PeerCredentials(pid: c.pid, uid: c.uid, gid: c.gid) }
                    .recover { _ in nil }
            } else {
                creds = channel.eventLoop.makeSucceededFuture(nil)
            }
            return creds.flatMapThrowing { cred in
                let l = limits()
                let sync = channel.pipeline.syncOperations
                try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false)
                try sync.addHandler(JSONProtocolErrorHandler())
                // The head deadline: armed by the first raw byte of a request (before the
                // decoder), disarmed by the decoded head (right after the decoder, so a
                // pipelined head counts when it is parsed, not when the previous answer is done).
                let headStart = HeadDeadlineStartHandler(timeout: .milliseconds(Int64(l.requestHeadTimeout * 1000)))
                let decoder = try sync.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
                let tracker = HeadDeadlineEndHandler(start: headStart)
                try sync.addHandler(tracker, name: "head-deadline-end", position: .after(decoder))
                try sync.addHandler(headStart, name: "head-deadline-start", position: .first)
                try sync.addHandler(IdleCloseHandler(tracker: tracker), position: .first)
                try sync.addHandler(IdleStateHandler(readTimeout: .milliseconds(Int64(l.idleTimeout * 1000))),
                                    name: "idle", position: .first)
                let conn = try HTTPConnection(wrappingChannelSynchronously: channel)
                return (conn, cred)
            }
        }
        switch listener {
        case .unixPath(let path, let mode, let gid):
            let ch = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true,
                                              childChannelInitializer: initializer)
            if chmod(path, mode_t(mode)) != 0 {
                logger.warning("cannot set socket mode", metadata: ["path": "\(path)", "errno": "\(errno)"])
            }
            if let gid, chown(path, uid_t.max, gid) != 0 {
                logger.warning("cannot set socket group", metadata: ["path": "\(path)", "errno": "\(errno)"])
            }
            return ch
        case .activated(let fd):
            return try await bootstrap.bind(fd, childChannelInitializer: initializer)
        case .tcp(let host, let port):
            return try await bootstrap.bind(host: host, port: port, childChannelInitializer: initializer)
        }
    }
}

/// A listening socket of the API, serving each connection as its own task.
struct BoundAPIServer: Service {
    let server: APIServer
    let channel: NIOAsyncChannel<(HTTPConnection, PeerCredentials?), Never>

    func run() async throws {
        let channel = self.channel
        let api = server.api
        let limits = server.limits
        let metricsOnly = server.metricsOnly
        let logger = server.logger
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await channel.executeThenClose { inbound in
                    for try await (conn, cred) in inbound {
                        group.addTask {
                            await APIConnection.serve(conn, peer: cred, api: api, limits: limits(), metricsOnly: metricsOnly,
                                                      logger: logger)
                        }
                    }
                }
                // The listener is closed: open keep-alive connections get no new requests.
                group.cancelAll()
            }
        } onGracefulShutdown: {
            channel.channel.close(promise: nil)
        }
        if case .unixPath(let path, _, _) = server.listener { unlink(path) }
    }
}

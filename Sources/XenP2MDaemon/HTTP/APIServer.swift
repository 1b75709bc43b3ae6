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

    private func bindChannel() async throws -> NIOAsyncChannel<AcceptedConnection, Never> {
        let limits = self.limits
        let limiter = ConnectionLimiter()
        let metrics = api.metrics
        let backlog = ListenBacklog.current()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: backlog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Accepts per wakeup (NIO's default is 4): a burst leaves the kernel's queue
            // sooner, measured 0.74 s instead of 0.89 s for 3 x 1000 (scripts/abuse.py).
            .serverChannelOption(.maxMessagesPerRead, value: 64)
        let initializer: @Sendable (Channel) -> EventLoopFuture<AcceptedConnection> = { channel in
            let l = limits()
            guard let slot = limiter.admit(max: l.maxConnections) else {
                metrics.connectionsRefused.increment()
                return channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(LingeringCloseHandler())
                    try sync.addHandler(HTTPResponseEncoder())
                    try sync.addHandler(RefusalHandler(maxConnections: l.maxConnections))
                    return .refused
                }
            }
            channel.closeFuture.whenComplete { _ in slot.release() }
            let creds: EventLoopFuture<PeerCredentials?>
            if let provider = channel as? SocketOptionProvider, case .unixDomainSocket = channel.localAddress {
                creds = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
                    .map { (c: UCred) -> PeerCredentials? in PeerCredentials(pid: c.pid, uid: c.uid, gid: c.gid) }
                    .recover { _ in nil }
            } else {
                creds = channel.eventLoop.makeSucceededFuture(nil)
            }
            return creds.flatMapThrowing { cred in
                let sync = channel.pipeline.syncOperations
                try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false)
                try sync.addHandler(JSONProtocolErrorHandler())
                try sync.addHandler(BodyDeadlineHandler(seconds: l.requestBodyTimeout))
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
                // Nearest the socket: once it lingers, nothing it drops reaches the others.
                try sync.addHandler(LingeringCloseHandler(), position: .first)
                let conn = try HTTPConnection(wrappingChannelSynchronously: channel)
                return .admitted(conn, cred, slot)
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
            let ch = try await bootstrap.bind(fd, childChannelInitializer: initializer)
            // NIO listens again on a socket it is handed, with its own default backlog
            // (128), before any channel option applies: that would undo the unit's
            // Backlog=. Listening once more sets the queue to the kernel's limit.
            if listen(fd, backlog) != 0 {
                logger.warning("cannot set the listen backlog", metadata: ["backlog": "\(backlog)", "errno": "\(errno)"])
            }
            return ch
        case .tcp(let host, let port):
            return try await bootstrap.bind(host: host, port: port, childChannelInitializer: initializer)
        }
    }
}

/// What the listener yields per accepted connection.
enum AcceptedConnection: Sendable {
    /// Within `http.max_connections`: served; the slot is released when it closes.
    case admitted(HTTPConnection, PeerCredentials?, ConnectionSlot)
    /// Over the limit: its own pipeline answers 503 and closes it.
    case refused
}

/// A listening socket of the API, serving each connection as its own task.
struct BoundAPIServer: Service {
    let server: APIServer
    let channel: NIOAsyncChannel<AcceptedConnection, Never>

    func run() async throws {
        let channel = self.channel
        let api = server.api
        let limits = server.limits
        let metricsOnly = server.metricsOnly
        let logger = server.logger
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await channel.executeThenClose { inbound in
                    for try await accepted in inbound {
                        guard case .admitted(let conn, let cred, let slot) = accepted else { continue }
                        group.addTask {
                            await APIConnection.serve(conn, peer: cred, slot: slot, api: api, limits: limits(),
                                                      metricsOnly: metricsOnly, logger: logger)
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

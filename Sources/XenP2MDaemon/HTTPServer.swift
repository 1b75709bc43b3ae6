import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import P2MEngine
import ServiceLifecycle
import XenP2MAPI

/// Where the API listens.
enum Listener: Sendable {
    /// Bind (and own) a socket file, with the given mode and group.
    case unixPath(String, mode: UInt32, group: gid_t?)
    /// An already bound socket from systemd (its unit sets mode and group).
    case activated(Int32)
    /// The optional metrics-only TCP listener.
    case tcp(host: String, port: Int)
}

/// Layout of Linux's `struct ucred` (SO_PEERCRED), which Glibc's module does not export
/// without _GNU_SOURCE.
struct UCred: Sendable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
}

/// Limits applied to every connection.
struct HTTPLimits: Sendable {
    var maxBodyBytes: Int
    var maxHeaders: Int
    var idleTimeout: Double
    /// Seconds from a request's first byte until its head must be complete.
    var requestHeadTimeout: Double
}

typealias HTTPConnection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

/// The socket API: HTTP/1.1 + JSON on SwiftNIO. One instance per listener.
final class APIServer: Service, @unchecked Sendable {
    let listener: Listener
    let api: API
    let limits: @Sendable () -> HTTPLimits
    let group: MultiThreadedEventLoopGroup
    let logger: Logger
    let metricsOnly: Bool
    private let boundLock = NSLock()
    private var boundPromise: [CheckedContinuation<Void, Error>] = []
    private var bound = false
    private var bindError: Error?

    init(listener: Listener, api: API, limits: @escaping @Sendable () -> HTTPLimits, group: MultiThreadedEventLoopGroup,
         logger: Logger, metricsOnly: Bool = false) {
        self.listener = listener
        self.api = api
        self.limits = limits
        self.group = group
        self.logger = logger
        self.metricsOnly = metricsOnly
    }

    /// Binds the listener; separate from `run` so start-up can fail before READY=1.
    func bind() async throws -> NIOAsyncChannel<(HTTPConnection, PeerCredentials?), Never> {
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

    var server: NIOAsyncChannel<(HTTPConnection, PeerCredentials?), Never>?

    func run() async throws {
        guard let server else { throw IncidentLogError(message: "API server run before bind") }
        let api = self.api
        let limits = self.limits
        let metricsOnly = self.metricsOnly
        let logger = self.logger
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { inbound in
                    for try await (conn, cred) in inbound {
                        group.addTask {
                            await Self.serve(conn, peer: cred, api: api, limits: limits(), metricsOnly: metricsOnly, logger: logger)
                        }
                    }
                }
                // The listener is closed: open keep-alive connections get no new requests.
                group.cancelAll()
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
        }
        if case .unixPath(let path, _, _) = listener { unlink(path) }
    }

    /// How long an answer written during graceful shutdown may take before its connection
    /// is closed anyway (the daemon must still stop promptly).
    static let shutdownWriteLimit = TimeAmount.seconds(2)

    /// Serves one connection: requests in order, until the peer closes, asks to close,
    /// idles out or sends something that is not HTTP.
    static func serve(_ conn: HTTPConnection, peer: PeerCredentials?, api: API, limits: HTTPLimits, metricsOnly: Bool,
                      logger: Logger) async {
        do {
            try await conn.executeThenClose { inbound, outbound in
                /// Writes one complete answer. Graceful shutdown cancels this task (`run`'s
                /// cancelAll), and NIO's writer refuses writes from a cancelled task: a request
                /// being answered right then (a scan ending with 503 `unavailable`) still gets
                /// its answer, written from an uncancelled task and bounded by closing the
                /// connection after `shutdownWriteLimit`.
                func send(_ parts: [HTTPServerResponsePart]) async throws {
                    do {
                        try await outbound.write(contentsOf: parts)
                    } catch is CancellationError {
                        let channel = conn.channel
                        let bound = channel.eventLoop.scheduleTask(in: shutdownWriteLimit) { channel.close(promise: nil) }
                        defer { bound.cancel() }
                        try await Task { try await outbound.write(contentsOf: parts) }.value
                    }
                }
                func tooLarge() -> APIResponse {
                    .error(.payloadTooLarge, "payload_too_large", "request bodies are limited to \(limits.maxBodyBytes) bytes")
                }
                var head: HTTPRequestHead?
                var body = ByteBuffer()
                for try await part in inbound {
                    switch part {
                    case .head(let h):
                        body.clear()
                        // Refused as soon as the head says so: the answer goes out at once and
                        // the connection is closed without reading a body the client may
                        // still be sending (or never send).
                        if h.headers.count > limits.maxHeaders {
                            try await send(Self.parts(.error(.requestHeaderFieldsTooLarge, "header_fields_too_large",
                                                             "at most \(limits.maxHeaders) header fields are accepted"),
                                                      version: h.version, keepAlive: false))
                            return
                        }
                        if let len = h.headers.first(name: "content-length").flatMap(Int.init), len > limits.maxBodyBytes {
                            try await send(Self.parts(tooLarge(), version: h.version, keepAlive: false))
                            return
                        }
                        head = h
                    case .body(var b):
                        guard let h = head else { continue }
                        // A chunked body has no length up front: refused once it passes the limit.
                        guard body.readableBytes + b.readableBytes <= limits.maxBodyBytes else {
                            try await send(Self.parts(tooLarge(), version: h.version, keepAlive: false))
                            return
                        }
                        body.writeBuffer(&b)
                    case .end:
                        guard let h = head else { continue }
                        head = nil
                        let response: APIResponse
                        if metricsOnly && h.uri.split(separator: "?").first != "/metrics" {
                            response = .error(.notFound, "not_found", "this listener serves GET /metrics only")
                        } else {
                            response = await api.handle(method: h.method, uri: h.uri, body: body, peer: peer)
                        }
                        // Cancelled meanwhile: the daemon is stopping; answer, then close.
                        let keepAlive = h.isKeepAlive && !Task.isCancelled
                        switch response {
                        case .full:
                            try await send(Self.parts(response, version: h.version, keepAlive: keepAlive))
                            if !keepAlive { return }
                        case .stream(let backlog, let live):
                            // A watch connection sends nothing more: the idle limit and the head
                            // deadline are for requests, not for a client waiting on events.
                            for name in ["idle", "head-deadline-start", "head-deadline-end"] {
                                _ = try? await conn.channel.pipeline.removeHandler(name: name).get()
                            }
                            var headers = HTTPHeaders()
                            headers.add(name: "Content-Type", value: "application/x-ndjson")
                            headers.add(name: "Cache-Control", value: "no-store")
                            headers.add(name: "Connection", value: "close")
                            // No Content-Length: NIO sends HTTP/1.1 chunked encoding.
                            try await outbound.write(.head(HTTPResponseHead(version: h.version, status: .ok, headers: headers)))
                            let enc = APIJSON.encoder()
                            for e in backlog { try await outbound.write(.body(.byteBuffer(Self.line(e, enc)))) }
                            if let live {
                                for await e in live {
                                    try await outbound.write(.body(.byteBuffer(Self.line(e, enc))))
                                }
                            }
                            try await outbound.write(.end(nil))
                            return
                        }
                    }
                }
            }
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }

    /// Head, body and end of a `.full` answer (nothing for a stream, which `serve` writes itself).
    static func parts(_ response: APIResponse, version: HTTPVersion, keepAlive: Bool) -> [HTTPServerResponsePart] {
        guard case .full(let status, let contentType, let payload, let extra) = response else { return [] }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(payload.readableBytes)")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        for (k, v) in extra { headers.add(name: k, value: v) }
        return [.head(HTTPResponseHead(version: version, status: status, headers: headers)), .body(.byteBuffer(payload)), .end(nil)]
    }

    static func line(_ e: DaemonEvent, _ enc: JSONEncoder) -> ByteBuffer {
        var data = (try? enc.encode(e)) ?? Data()
        data.append(10)
        return ByteBuffer(bytes: data)
    }
}

/// Turns HTTP parse errors into a JSON 400 (or 431) and closes: NIO's own handler sends
/// an empty body, and every error of this API is JSON.
final class JSONProtocolErrorHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let e = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        let tooLarge = e == .headerOverflow
        let apiError = tooLarge
            ? APIError(code: "header_fields_too_large", message: "request header too large")
            : APIError(code: "bad_request", message: "malformed HTTP request: \(e)")
        let payload = (try? APIJSON.encoder().encode(apiError)) ?? Data()
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: "\(payload.count)")
        headers.add(name: "Connection", value: "close")
        let head = HTTPResponseHead(version: .http1_1, status: tooLarge ? .requestHeaderFieldsTooLarge : .badRequest, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: payload)))), promise: nil)
        let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in ctx.value.close(promise: nil) }
    }
}

/// Closes connections that sent nothing for the idle limit, unless the daemon still owes
/// them an answer: a client waiting on a long POST .../scan is silent, not idle.
final class IdleCloseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    let tracker: HeadDeadlineEndHandler

    init(tracker: HeadDeadlineEndHandler) { self.tracker = tracker }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read {
            // The idle timer fires again one limit later; the answer, once written, ends the wait.
            if tracker.awaitingAnswer == 0 { context.close(promise: nil) }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// Starts a request's head deadline at its first raw byte (it sits before the HTTP
/// decoder). The idle limit alone cannot stop a slow-loris client: every byte resets it.
/// `HeadDeadlineEndHandler` (right after the decoder) reports heads and ends.
final class HeadDeadlineStartHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private enum State {
        /// Between requests: the next byte starts a head.
        case waiting
        /// A head has started and is not complete yet.
        case readingHead
        /// Head complete; body bytes until the request's end.
        case inRequest
    }

    let timeout: TimeAmount
    private var state = State.waiting
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount) { self.timeout = timeout }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if state == .waiting {
            state = .readingHead
            let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
            timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
                ctx.value.close(promise: nil)
            }
        }
        context.fireChannelRead(data)
    }

    func headReceived() {
        state = .inRequest
        timer?.cancel()
        timer = nil
    }

    func requestEnded() { state = .waiting }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }
}

/// Tells `HeadDeadlineStartHandler` when a decoded request head and end pass by, and
/// counts requests received in full whose answer has not been written yet (it sits
/// between the HTTP codec and the application, so it sees both directions as parts).
final class HeadDeadlineEndHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    let start: HeadDeadlineStartHandler
    /// Event-loop confined, like every handler's state.
    private(set) var awaitingAnswer = 0

    init(start: HeadDeadlineStartHandler) { self.start = start }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: start.headReceived()
        case .end:
            start.requestEnded()
            awaitingAnswer += 1
        case .body: break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Answers refused at the head (413, 431) end before their request does.
        if case .end = unwrapOutboundIn(data), awaitingAnswer > 0 { awaitingAnswer -= 1 }
        context.write(data, promise: promise)
    }
}

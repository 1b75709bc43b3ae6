import Foundation
import Logging
import NIOCore
import NIOHTTP1
import XenP2MAPI

/// One accepted connection of the socket API: its requests in order, answered by `API`.
enum APIConnection {
    /// How long an answer written during graceful shutdown may take before its connection
    /// is closed anyway (the daemon must still stop promptly).
    static let shutdownWriteLimit = TimeAmount.seconds(2)

    /// Serves one connection: requests in order, until the peer closes, asks to close,
    /// idles out or sends something that is not HTTP.
    static func serve(_ conn: HTTPConnection, peer: PeerCredentials?, slot: ConnectionSlot, api: API, limits: HTTPLimits,
                      metricsOnly: Bool, logger: Logger) async {
        do {
            try await conn.executeThenClose { inbound, outbound in
                /// Writes one complete answer and returns once it reached the kernel. Through
                /// the channel with a promise, not the async writer: that writer's writes carry
                /// none, so an answer larger than the socket buffer (a P2M table, a big fleet)
                /// was still pending when a `Connection: close` answer ended the connection,
                /// and closing a channel drops its pending writes. Graceful shutdown (a
                /// cancelled task) still answers, bounded by closing after `shutdownWriteLimit`.
                func send(_ parts: [HTTPServerResponsePart]) async throws {
                    let channel = conn.channel
                    let bound = Task.isCancelled
                        ? channel.eventLoop.scheduleTask(in: shutdownWriteLimit) { channel.close(promise: nil) } : nil
                    defer { bound?.cancel() }
                    guard let last = parts.last else { return }
                    for p in parts.dropLast() { channel.write(NIOAny(p), promise: nil) }
                    try await channel.writeAndFlush(NIOAny(last)).get()
                }
                /// An error answer that ends the connection while the client may still be
                /// sending: lingering close (see LingeringCloseHandler), then done. A stopping
                /// daemon closes at once.
                func refuse(_ response: APIResponse, version: HTTPVersion) async throws {
                    try await send(Self.parts(response, version: version, keepAlive: false))
                    guard !Task.isCancelled else { return }
                    try await LingeringCloseHandler.start(on: conn.channel).get()
                    try await conn.channel.closeFuture.get()
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
                        // Refused as soon as the head says so: the answer goes out at once, and
                        // a body the client may still be sending (or never send) is dropped
                        // unparsed while the connection lingers.
                        if h.headers.count > limits.maxHeaders {
                            try await refuse(.error(.requestHeaderFieldsTooLarge, "header_fields_too_large",
                                                    "at most \(limits.maxHeaders) header fields are accepted"),
                                             version: h.version)
                            return
                        }
                        if let len = h.headers.first(name: "content-length").flatMap(Int.init), len > limits.maxBodyBytes {
                            try await refuse(tooLarge(), version: h.version)
                            return
                        }
                        head = h
                    case .body(var b):
                        guard let h = head else { continue }
                        // A chunked body has no length up front: refused once it passes the limit.
                        guard body.readableBytes + b.readableBytes <= limits.maxBodyBytes else {
                            try await refuse(tooLarge(), version: h.version)
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
                            // A following stream holds a stream slot instead of its request
                            // slot; over the stream limit it is refused like a connection.
                            if live != nil && !slot.becomeStream(max: limits.maxEventStreams) {
                                api.metrics.eventStreamsRefused.increment()
                                let refusal = APIResponse.error(
                                    .serviceUnavailable, "too_many_event_streams",
                                    "\(limits.maxEventStreams) event streams are open (http.max_event_streams); retry in \(RefusalHandler.retryAfterSeconds) s",
                                    extra: [("Retry-After", "\(RefusalHandler.retryAfterSeconds)")])
                                try await send(Self.parts(refusal, version: h.version, keepAlive: false))
                                return
                            }
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

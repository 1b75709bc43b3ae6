import NIOCore
import NIOHTTP1

/// The whole pipeline of a connection over `http.max_connections` (after the response
/// encoder): a 503 with `Retry-After` as soon as it is accepted, then close. What the client
/// sends is never parsed: a refused connection costs no request handling. It ends with a
/// lingering close (a client still writing its request reads the 503, not EPIPE).
final class RefusalHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = HTTPServerResponsePart

    /// Seconds a refused client is told to wait: connections here are short (a request or
    /// a few), so a slot is usually free again within one.
    static let retryAfterSeconds = 1

    let maxConnections: Int
    private var answered = false

    init(maxConnections: Int) { self.maxConnections = maxConnections }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        refuse(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    static func answer(maxConnections: Int) -> APIResponse {
        .error(.serviceUnavailable, "too_many_connections",
               "\(maxConnections) connections are open (http.max_connections); retry in \(retryAfterSeconds) s",
               extra: [("Retry-After", "\(retryAfterSeconds)")])
    }

    private func refuse(_ context: ChannelHandlerContext) {
        guard !answered else { return }
        answered = true
        let parts = APIConnection.parts(Self.answer(maxConnections: maxConnections), version: .http1_1, keepAlive: false)
        for p in parts.dropLast() { context.write(wrapOutboundOut(p), promise: nil) }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(parts.last!)).whenComplete { _ in
            LingeringCloseHandler.start(on: channel).whenFailure { _ in channel.close(promise: nil) }
        }
    }
}

import Foundation
import NIOCore
import NIOHTTP1
import XenP2MAPI

/// A request body must be complete `timeout` after its head: 408 and a lingering close
/// otherwise. The idle limit alone lets a client trickle a body for ever (each byte
/// resets it), and the head deadline has ended with the head. It sits after the HTTP
/// decoder; once it has answered, the request's remaining parts go no further. An answer
/// the application writes first (a 413 refusing the body) disarms it: one answer per request.
final class BodyDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    let seconds: Double
    private var timer: Scheduled<Void>?
    private var answered = false

    init(seconds: Double) { self.seconds = seconds }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if answered { return }
        switch unwrapInboundIn(data) {
        case .head(let h):
            let declared = h.headers.first(name: "content-length").flatMap(Int.init) ?? 0
            if declared > 0 || h.headers.contains(name: "transfer-encoding") {
                let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
                let version = h.version
                timer = context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(seconds * 1000))) { [self] in
                    answer(ctx.value, version: version)
                }
            }
        case .end:
            timer?.cancel()
            timer = nil
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .head = unwrapOutboundIn(data) {
            timer?.cancel()
            timer = nil
        }
        context.write(data, promise: promise)
    }

    private func answer(_ context: ChannelHandlerContext, version: HTTPVersion) {
        answered = true
        let response = APIResponse.error(.requestTimeout, "request_timeout",
                                         "the request body did not arrive within \(seconds.formatted(.number)) s of its head (http.request_body_timeout_seconds)")
        let parts = APIConnection.parts(response, version: version, keepAlive: false)
        for p in parts.dropLast() { context.write(wrapOutboundOut(p), promise: nil) }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(parts.last!)).whenComplete { _ in
            LingeringCloseHandler.start(on: channel).whenFailure { _ in channel.close(promise: nil) }
        }
    }

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

import NIOCore
import NIOHTTP1

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

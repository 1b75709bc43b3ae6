import NIOCore

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

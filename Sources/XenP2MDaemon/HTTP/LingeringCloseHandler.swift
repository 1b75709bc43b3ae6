import NIOCore

/// How a connection ends after an error answer that closes it (400, 408, 413, 431): not
/// at once. The client may still be sending the head or body we refused; a close with
/// its bytes unread makes its next write fail (EPIPE, or a reset), and most clients then
/// report that and never read the answer waiting for them. So, as nginx's
/// `lingering_close` does: our side is shut down (the client reads the answer, then end
/// of file), and what still arrives is read and dropped until the client closes, falls
/// quiet for `quietLimit`, sends more than `maxBytes`, or `timeLimit` has passed.
/// Dropping costs no memory: the buffers are released as they come. It sits first in the
/// pipeline, before the HTTP decoder, so nothing it drops is parsed, and it asks the
/// socket for more itself: the application stopped reading (the async channel's
/// backpressure holds reads back), and without them the client would block mid-body.
final class LingeringCloseHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The outbound event that starts it; send it once the answer has been flushed.
    struct Start: Sendable {}

    static let timeLimit = TimeAmount.seconds(5)
    static let quietLimit = TimeAmount.seconds(2)
    static let maxBytes = 128 << 20

    private var lingering = false
    private(set) var discarded = 0
    private var deadline: Scheduled<Void>?
    private var quiet: Scheduled<Void>?

    /// Starts lingering on `channel` (a no-op once it is closed or lingering).
    static func start(on channel: Channel) -> EventLoopFuture<Void> {
        channel.triggerUserOutboundEvent(Start())
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard event is Start else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        promise?.succeed(())
        guard !lingering else { return }
        lingering = true
        let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.close(mode: .output).whenFailure { _ in ctx.value.close(promise: nil) }
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: Self.timeLimit) { ctx.value.close(promise: nil) }
        armQuiet(context)
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard lingering else {
            context.fireChannelRead(data)
            return
        }
        discarded += unwrapInboundIn(data).readableBytes
        if discarded > Self.maxBytes {
            context.close(promise: nil)
        } else {
            armQuiet(context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if lingering {
            context.read()
        } else {
            context.fireChannelReadComplete()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancelTimers()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) { cancelTimers() }

    private func armQuiet(_ context: ChannelHandlerContext) {
        quiet?.cancel()
        let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
        quiet = context.eventLoop.assumeIsolated().scheduleTask(in: Self.quietLimit) { ctx.value.close(promise: nil) }
    }

    private func cancelTimers() {
        deadline?.cancel()
        quiet?.cancel()
        deadline = nil
        quiet = nil
    }
}

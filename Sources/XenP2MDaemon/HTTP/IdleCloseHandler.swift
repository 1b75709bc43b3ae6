import NIOCore
import NIOHTTP1

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

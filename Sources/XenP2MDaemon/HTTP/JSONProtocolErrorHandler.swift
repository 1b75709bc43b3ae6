import Foundation
import NIOCore
import NIOHTTP1
import XenP2MAPI

/// Turns HTTP parse errors into a JSON 400 (or 431) and ends the connection with a
/// lingering close (the client may still be sending the line or header it choked on):
/// NIO's own handler sends an empty body, and every error of this API is JSON.
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
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            LingeringCloseHandler.start(on: channel).whenFailure { _ in channel.close(promise: nil) }
        }
    }
}

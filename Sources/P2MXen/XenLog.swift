// Routes libxenctrl's own log lines (xentoollog) into swift-log. Without this the
// libraries print to stderr, which a daemon must never do behind its logger's back.

import Logging

/// The shim's log context: an unretained pointer to this box travels through C and
/// comes back in every callback. XenHost keeps the box alive for as long as the handle.
final class XenLogSink: Sendable {
    let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    var context: UnsafeMutableRawPointer {
        Unmanaged.passUnretained(self).toOpaque()
    }

    func emit(level: Int32, errnoval: Int32, xenContext: String, message: String) {
        var text = Substring(message)
        while let last = text.last, last == "\n" || last == "\r" { text = text.dropLast() }
        let line = String(text)
        logger.log(level: Self.level(xtl: level), "\(line)", metadata: {
            var m: Logger.Metadata = ["xen.context": .string(xenContext)]
            if errnoval > 0 { m["errno"] = .stringConvertible(errnoval) }
            return m
        }())
    }

    /// xentoollog has nine levels, swift-log seven: the three chatty ones fold into trace/debug.
    static func level(xtl: Int32) -> Logger.Level {
        switch xtl {
        case ...XenLogLevel.debug: return .trace
        case XenLogLevel.verbose, XenLogLevel.detail: return .debug
        case XenLogLevel.progress, XenLogLevel.info: return .info
        case XenLogLevel.notice: return .notice
        case XenLogLevel.warn: return .warning
        case XenLogLevel.error: return .error
        default: return .critical
        }
    }
}

/// Captures nothing, as a C function pointer must; everything comes through the context.
let xenLogCallback: XenLogCallback = { context, level, errnoval, xenContext, message in
    guard let context else { return }
    let sink = Unmanaged<XenLogSink>.fromOpaque(context).takeUnretainedValue()
    sink.emit(level: level, errnoval: errnoval,
              xenContext: xenContext.map { String(cString: $0) } ?? "",
              message: message.map { String(cString: $0) } ?? "")
}

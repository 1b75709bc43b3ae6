import Foundation
import Logging

/// Collects what reaches a Logger, so tests can see where xentoollog lines end up.
public final class LogCapture: @unchecked Sendable {
    public struct Record: Sendable {
        public var level: Logger.Level
        public var message: String
        public var metadata: Logger.Metadata
    }

    public init() {}

    private let lock = NSLock()
    private var stored: [Record] = []

    public var records: [Record] {
        lock.lock()
        defer { lock.unlock() }
        return stored
    }

    public func append(_ r: Record) {
        lock.lock()
        stored.append(r)
        lock.unlock()
    }

    public func logger() -> Logger {
        var l = Logger(label: "xenp2m.test") { _ in CaptureHandler(capture: self) }
        l.logLevel = .trace
        return l
    }
}

public struct CaptureHandler: LogHandler {
    public let capture: LogCapture
    public var logLevel: Logger.Level = .trace
    public var metadata: Logger.Metadata = [:]

    public init(capture: LogCapture) { self.capture = capture }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        capture.append(.init(level: event.level, message: event.message.description,
                             metadata: metadata.merging(event.metadata ?? [:]) { $1 }))
    }
}

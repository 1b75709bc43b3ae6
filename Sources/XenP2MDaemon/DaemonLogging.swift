import Foundation
import Logging

/// A log level shared by every logger of the process, so a reload changes it everywhere.
public final class LogLevelBox: @unchecked Sendable {
    public static let shared = LogLevelBox()
    private let lock = NSLock()
    private var level: Logger.Level = .info

    public var value: Logger.Level {
        get { lock.lock(); defer { lock.unlock() }; return level }
        set { lock.lock(); level = newValue; lock.unlock() }
    }
}

/// stderr logging (journald adds time and unit) whose level follows `LogLevelBox`.
public struct DaemonLogHandler: LogHandler {
    private var inner: StreamLogHandler
    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }
    public var logLevel: Logger.Level {
        get { LogLevelBox.shared.value }
        set { LogLevelBox.shared.value = newValue }
    }

    public init(label: String) { inner = StreamLogHandler.standardError(label: label) }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) { inner.log(event: event) }
}

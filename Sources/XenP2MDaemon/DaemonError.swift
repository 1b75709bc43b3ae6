/// A start-up failure with the message an operator should see (no stack trace).
public struct DaemonError: Error, CustomStringConvertible {
    public var message: String
    /// Process exit status: 2 for configuration, 1 for everything else.
    public var exitCode: Int32
    public var description: String { message }

    public init(message: String, exitCode: Int32) {
        self.message = message
        self.exitCode = exitCode
    }
}

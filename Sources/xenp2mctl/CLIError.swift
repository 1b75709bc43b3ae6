/// Why a command failed: one line for stderr and the exit status (1 unless the command
/// documents another). `XenP2Mctl.main` prints it; nothing else writes errors.
struct CLIError: Error {
    var message: String
    var code: Int32 = 1

    init(_ message: String, code: Int32 = 1) {
        self.message = message
        self.code = code
    }
}

import ArgumentParser
import P2MEngine
import XenP2MAPI

/// What `xl save`, `xl migrate` and `xl dump-core` will do with a guest, before running them.
struct Preflight: DaemonCommand {
    static let configuration = CommandConfiguration(
        abstract: "Predict what the toolstack (xl save / migrate / dump-core) will do with a domain, with libxenguest's own messages.",
        discussion: """
            Scans the domain now (the daemon's latest report with --cached) and prints one line per operation: \
            works, aborts_if_changing, risky, incomplete, copies_wrong_memory or fails (with the exact message).
            Exit status: 0 every operation is safe, 1 risky (may abort or lose frames), 2 an operation will fail or copy \
            the wrong memory, 3 no prediction (scan failed, daemon unreachable). The pre-4.6 tree-only line is information only.
            """)
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    @Argument(help: "Domain id.") var domid: UInt32
    @Flag(help: "Print the toolstack section as JSON.") var json = false
    @Flag(help: "Use the daemon's latest report instead of scanning now.") var cached = false

    func run() throws {
        let r: HTTPResponse
        do throws(CLIError) {
            r = cached ? try get("/v1/domains/\(domid)") : try request("POST", "/v1/domains/\(domid)/scan")
        } catch {
            throw CLIError(error.message, code: 3)
        }
        let report: P2MReport
        do throws(CLIError) { report = try decode(P2MReport.self, r) } catch { throw CLIError(error.message, code: 3) }
        try Self.emit(report, json: json)
    }

    /// Prints the prediction and exits with its status (shared with check-core --preflight).
    static func emit(_ report: P2MReport, json: Bool) throws {
        if json {
            writeOut(try P2MReport.encoder().encode(report.toolstack))
        } else {
            print(Render.preflight(report), terminator: "")
        }
        guard let t = report.toolstack else { throw ExitCode(3) }
        throw ExitCode(t.exitStatus)
    }
}

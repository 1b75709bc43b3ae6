import ArgumentParser
import P2MDumpCore
import P2MEngine
import XenP2MAPI

/// Offline: the same engine over an `xl dump-core` file; needs neither a daemon nor Xen.
struct CheckCore: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-core",
        abstract: "Check the P2M of the guest in an xl dump-core file, offline (no daemon, no Xen).",
        discussion: "Exit status: 0 ok or not applicable, 1 warning, 2 critical, 3 the file cannot be read.")
    @Argument(help: "Dump-core file.", completion: .file()) var file: String
    @Flag(help: "Print the report JSON (same schema as `status --json`).") var json = false
    @Flag(help: "Print the pfn map instead of the summary.") var map = false
    @Option(help: "Domid to put in the report.") var domid: UInt32 = 0
    @Option(help: "Guest width in bits (32 or 64) if the file does not record it.") var width: Int?
    @Flag(help: "Predict, from what the dump shows, what xl save/migrate/dump-core would do with the guest (exit status as `preflight`).")
    var preflight = false

    func run() throws {
        let guestWidth: GuestWidth?
        switch width {
        case nil: guestWidth = nil
        case 32?: guestWidth = .bits32
        case 64?: guestWidth = .bits64
        case let w?: throw CLIError("--width must be 32 or 64, not \(w)", code: 3)
        }
        let c: CoreCheck
        do {
            c = try checkCoreFile(path: file, core: CoreDumpOptions(domid: domid, guestWidth: guestWidth))
        } catch {
            throw CLIError("\(error)", code: 3)
        }
        if preflight {
            try Preflight.emit(c.report, json: json)
        }
        if json {
            writeOut(try P2MReport.encoder().encode(c.report))
        } else if map {
            print(Render.map(c.report), terminator: "")
        } else {
            print(c.core.description)
            print(Render.status(c.report), terminator: "")
        }
        throw ExitCode(NagiosState(c.report.severity).rawValue)
    }
}

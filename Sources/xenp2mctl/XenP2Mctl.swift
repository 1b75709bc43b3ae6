import ArgumentParser
import Foundation
import P2MXen
import XenP2MAPI

@main
struct XenP2Mctl: ParsableCommand {
    /// `xenp2mctl --socket PATH <command>`: the socket may come before the subcommand too.
    @OptionGroup var connection: Connection

    static let configuration = CommandConfiguration(
        commandName: "xenp2mctl",
        abstract: "Ask xenp2md about the P2M of Xen PV guests.",
        discussion: "Shell completions: xenp2mctl --generate-completion-script bash|zsh|fish",
        version: "xenp2mctl \(XenP2MVersion.string), built for \(XenVersion.builtInterface)",
        subcommands: [Status.self, List.self, Scan.self, Watch.self, Metrics.self, Map.self, Check.self, CheckCore.self, Preflight.self, DumpP2M.self, Fleet.self])

    /// The one place a failure is printed: a `CLIError` becomes "xenp2mctl: message" on
    /// stderr and its exit status; everything else (usage errors, --help, a check's exit
    /// status) is ArgumentParser's.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let e as CLIError {
            FileHandle.standardError.write(Data("xenp2mctl: \(e.message)\n".utf8))
            Foundation.exit(e.code)
        } catch {
            exit(withError: error)
        }
    }
}

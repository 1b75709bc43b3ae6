import ArgumentParser
import P2MEngine
import XenP2MAPI

struct Scan: DaemonCommand {
    static let configuration = CommandConfiguration(abstract: "Scan a domain now and show the new report (root or the socket's group).")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    @Argument(help: "Domain id.") var domid: UInt32
    @Option(help: "Seconds to wait for the scan.") var timeout: Double?
    @Flag(help: "Print the report JSON.") var json = false

    func run() throws {
        var path = "/v1/domains/\(domid)/scan"
        if let timeout { path += "?timeout=\(timeout)" }
        let r = try request("POST", path)
        if json {
            writeOut(r.body)
        } else {
            print(Render.status(try decode(P2MReport.self, r)), terminator: "")
        }
    }
}

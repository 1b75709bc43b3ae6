import ArgumentParser
import P2MEngine
import XenP2MAPI

struct Status: DaemonCommand {
    static let configuration = CommandConfiguration(abstract: "Latest report of one domain.")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    @Argument(help: "Domain id.") var domid: UInt32
    @Flag(help: "Print the report JSON exactly as the daemon serves it.") var json = false

    func run() throws {
        let r = try get("/v1/domains/\(domid)")
        if json {
            writeOut(r.body)
        } else {
            print(Render.status(try decode(P2MReport.self, r)), terminator: "")
        }
    }
}

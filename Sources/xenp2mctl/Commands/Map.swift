import ArgumentParser
import P2MEngine
import XenP2MAPI

struct Map: DaemonCommand {
    static let configuration = CommandConfiguration(abstract: "A picture of a domain's pfn space: where its P2M is valid, invalid, 1:1, foreign or broken.")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    @Argument(help: "Domain id.") var domid: UInt32
    @Option(help: "Cells per row.") var width = 64

    func run() throws {
        let r = try get("/v1/domains/\(domid)")
        print(Render.map(try decode(P2MReport.self, r), width: width), terminator: "")
    }
}

import ArgumentParser
import XenP2MAPI

struct List: DaemonCommand {
    static let configuration = CommandConfiguration(abstract: "All domains: severity, format, levels, max_pfn, findings.")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    @Flag(help: "Print the JSON array of summaries.") var json = false

    func run() throws {
        let r = try get("/v1/domains")
        if json {
            writeOut(r.body)
        } else {
            print(Render.summaries(try decode([DomainSummary].self, r)), terminator: "")
        }
    }
}

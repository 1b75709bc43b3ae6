import ArgumentParser

struct Metrics: DaemonCommand {
    static let configuration = CommandConfiguration(abstract: "The Prometheus metrics text.")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl

    func run() throws {
        writeOut(try get("/metrics").body)
    }
}

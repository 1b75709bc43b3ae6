import ArgumentParser
import Foundation
import P2MDumpCore
import P2MEngine
import XenP2MAPI

/// Every pfn -> mfn, as xen-mfndump dump-p2m prints it (or as JSON lines).
struct DumpP2M: DaemonCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump-p2m",
        abstract: "Every pfn -> mfn of a domain (or of the guest in a dump-core file), in xen-mfndump dump-p2m's format.",
        discussion: """
            Read as xen-mfndump and xl dump-core read it: the linear list whenever p2m_cr3 != 0, sized from nr_gpfns. \
            xenp2m knows no page types, so the "(type ..)" column is left out: compare pfn and mfn.
            """)
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    @Argument(help: "Domain id (ignored with --core).") var domid: UInt32?
    @Option(help: "Read the guest in this dump-core file instead of asking the daemon.", completion: .file()) var core: String?
    @Flag(help: "One JSON object per line: {\"pfn\":N,\"mfn\":N}.") var json = false

    func run() throws {
        if let core {
            let table: P2MTable
            do {
                let host = try CoreDumpHost(path: core, options: CoreDumpOptions(domid: domid ?? 0))
                table = try P2MTable.read(host: host, domid: host.domid)
            } catch {
                throw CLIError("\(error)")
            }
            writeOut(Data((json ? table.jsonLines() : table.mfndumpText()).utf8))
            return
        }
        guard let domid else { throw CLIError("dump-p2m needs a domain id or --core FILE") }
        let r = try get("/v1/domains/\(domid)/p2m" + (json ? "?format=jsonl" : ""))
        FileHandle.standardOutput.write(r.body)
    }
}

import Foundation
import Testing
import P2MEngine
import XenP2MAPI

/// `xenp2mctl preflight` and `dump-p2m` against the real daemon on the demo fleet.
@Suite("preflight and dump-p2m commands end to end")
struct PreflightCommandTests {
    static func ctl(_ d: DaemonUnderTest, _ args: String...) throws -> RunResult {
        try runTool(try Binaries.path("xenp2mctl"), ["--socket", d.socket] + args)
    }

    @Test func preflightLinesAndExitStatus() throws {
        let d = try DaemonUnderTest(pollInterval: 3600)
        try d.waitReady()
        let healthy = try Self.ctl(d, "preflight", "1")
        #expect(healthy.status == 0, "\(healthy.stdout)\(healthy.stderr)")
        for op in ["xl save", "xl migrate", "xl dump-core", "pre-4.6 tree-only"] {
            #expect(healthy.stdout.contains(op), "\(healthy.stdout)")
        }
        let broken = try Self.ctl(d, "preflight", "6")
        #expect(broken.status == 2, "\(broken.stdout)")
        #expect(broken.stdout.contains("copies_wrong_memory"), "\(broken.stdout)")
        let json = try Self.ctl(d, "preflight", "6", "--json")
        #expect(json.status == 2)
        let t = try P2MReport.decoder().decode(ToolstackReport.self, from: Data(json.stdout.utf8))
        #expect(t.prediction(.save)?.outcome == .copiesWrongMemory)
        #expect(t.prediction(.save)?.pfns.isEmpty == false)
        // HVM: no P2M for the toolstack to read, no prediction.
        #expect(try Self.ctl(d, "preflight", "5").status == 3)
        let missing = try Self.ctl(d, "preflight", "99")
        #expect(missing.status == 3)
        #expect(missing.stderr.contains("not_found"), "\(missing.stderr)")
    }

    /// A table of 262,144 entries (7.7 MB) is larger than the socket buffer: it must
    /// arrive whole although the CLI's request ends the connection.
    @Test func dumpP2MTextAndJSONLines() throws {
        let d = try DaemonUnderTest(pollInterval: 3600)
        try d.waitReady()
        let report = try P2MReport.decoder().decode(P2MReport.self, from: Data(try Self.ctl(d, "status", "1", "--json").stdout.utf8))
        let text = try Self.ctl(d, "dump-p2m", "1")
        #expect(text.status == 0, "\(text.stderr)")
        let lines = text.stdout.split(separator: "\n")
        #expect(lines.first?.contains("Dumping P2M for domain 1") == true, "\(lines.prefix(3))")
        let entries = lines.filter { $0.contains("pfn=0x") }
        let maxPfn = try #require(report.maxPfn?.effective)
        #expect(UInt64(entries.count) == maxPfn)
        #expect(entries.first?.trimmingCharacters(in: .whitespaces).hasPrefix("pfn=0x0 ==> mfn=0x") == true)
        let jsonl = try Self.ctl(d, "dump-p2m", "1", "--json")
        #expect(jsonl.status == 0, "\(jsonl.stderr)")
        let objects = jsonl.stdout.split(separator: "\n")
        #expect(objects.count == entries.count)
        // Both forms name the same frames.
        for i in [0, objects.count / 2, objects.count - 1] {
            let o = try JSONSerialization.jsonObject(with: Data(objects[i].utf8)) as! [String: Any]
            let pfn = o["pfn"] as! Int
            #expect(pfn == i)
            let mfn = (o["mfn"] as? Int).map { "0x" + String($0, radix: 16) } ?? "?"
            #expect(entries[i].contains("mfn=\(mfn)") || o["mfn"] == nil, "\(entries[i]) vs \(objects[i])")
        }
        #expect(try Self.ctl(d, "dump-p2m", "99").status != 0)
    }
}

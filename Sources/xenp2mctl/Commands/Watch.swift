import ArgumentParser
import Foundation
import XenP2MAPI

struct Watch: DaemonCommand {
    static let configuration = CommandConfiguration(abstract: "Follow events (state changes) as they happen.")
    @OptionGroup var local: Connection
    @ParentCommand var root: XenP2Mctl
    @Option(help: "Also show kept events after this sequence number (0: all kept, including the incident log).")
    var since: UInt64?
    @Option(help: "Stop after this many events.") var count: Int?
    @Flag(name: .customLong("no-follow"), help: "Print the kept events and exit.") var noFollow = false
    @Flag(help: "One JSON event per line.") var json = false

    func run() throws {
        var q: [String] = []
        if let since { q.append("since=\(since)") }
        if noFollow { q.append("follow=0") }
        let path = "/v1/events" + (q.isEmpty ? "" : "?" + q.joined(separator: "&"))
        var seen = 0
        var body: [String] = []
        let decoder = APIJSON.decoder()
        let fmt = ISO8601DateFormatter()
        let status: Int
        do {
            status = try connection.client.stream("GET", path) { line in
                guard !line.isEmpty else { return true }
                body.append(line)
                guard let e = try? decoder.decode(DaemonEvent.self, from: Data(line.utf8)) else { return true }
                // Unbuffered: watch output is often piped and must appear as it happens.
                let text = json ? line : "\(fmt.string(from: e.time))  #\(e.seq)  \(e.kind.rawValue.padding(toLength: 16, withPad: " ", startingAt: 0))  \(e.message)"
                FileHandle.standardOutput.write(Data((text + "\n").utf8))
                seen += 1
                return count.map { seen < $0 } ?? true
            }
        } catch {
            throw CLIError("\(error)")
        }
        if !(200..<300).contains(status) {
            let e = body.joined().data(using: .utf8).flatMap { try? decoder.decode(APIError.self, from: $0) }
            throw CLIError(e.map { "\($0.code): \($0.message)" } ?? "HTTP \(status) from xenp2md")
        }
    }
}

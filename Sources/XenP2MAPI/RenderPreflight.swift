import P2MEngine

extension Render {
    /// `xenp2mctl preflight`: one line per operation, then the pre-4.6 line. A failure
    /// shows libxenguest's lines joined by " | " and where the check lives.
    public static func preflight(_ r: P2MReport) -> String {
        let who = "domain \(r.domid)" + (r.name.map { " (\($0))" } ?? "")
        guard let t = r.toolstack else {
            if let e = r.error { return "\(who): no prediction, the scan failed: \(e)\n" }
            return "\(who): no prediction (\(r.domainType.rawValue.uppercased()) guest: Xen keeps its p2m; save and dump-core do not read one)\n"
        }
        var s = "\(who): what \(t.libxenguest) will do\n"
        for p in t.predictions {
            let via = p.path.map { $0 == .tree ? "tree" : "list" } ?? "-"
            var text: String
            if !p.messages.isEmpty {
                text = p.messages.map { $0.trimmingLeadingSpaces }.joined(separator: " | ")
                if let src = p.source { text += "  [\(src)]" }
            } else {
                text = p.detail
                if !p.pfns.isEmpty {
                    text += " (pfns " + p.pfns.map { "0x" + String($0, radix: 16) }.joined(separator: ", ") + (p.pfnCount > UInt64(p.pfns.count) ? ", ..." : "") + ")"
                }
            }
            let op = p.operation == .treeOnlyToolstack ? "pre-4.6 tree-only" : p.command
            s += "  \(op.padding(toLength: 18, withPad: " ", startingAt: 0)) \(p.outcome.rawValue.padding(toLength: 20, withPad: " ", startingAt: 0)) \(via.padding(toLength: 5, withPad: " ", startingAt: 0)) \(text)\n"
        }
        return s
    }
}

extension String {
    fileprivate var trimmingLeadingSpaces: String { String(drop { $0 == " " }) }
}

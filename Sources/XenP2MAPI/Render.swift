import Foundation
import P2MEngine

/// Plain-text renderings shared by `xenp2md --once` and `xenp2mctl`.
public enum Render {
    /// A fixed-width table with a header row; columns sized to their widest cell.
    public static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n") + "\n"
    }

    public static let summaryHeader = ["DOMID", "NAME", "SEVERITY", "FORMAT", "LEVELS", "MAX_PFN", "FINDINGS"]

    public static func summaryRow(_ s: DomainSummary) -> [String] {
        let findings: String
        if let e = s.error {
            findings = "error: \(e)"
        } else if let skip = s.skipped {
            findings = "(not scanned: \(skip))"
        } else {
            findings = s.findings == 0 ? "-" : "\(s.findings) (\(s.findingKinds.joined(separator: ",")))"
        }
        return ["\(s.domid)", s.name ?? "-", s.severity.rawValue, s.primaryFormat?.rawValue ?? "-",
                s.levels.map(String.init) ?? "-", s.maxPfn.map { "0x" + String($0, radix: 16) } ?? "-", findings]
    }

    public static func summaries(_ list: [DomainSummary]) -> String {
        var out = table(summaryHeader, list.map(summaryRow))
        // The daemon marks every row the same way while it cannot list domains.
        if let why = list.lazy.compactMap(\.stale).first { out += "STALE: \(why)\n" }
        return out
    }

    /// The human summary of one report (`xenp2mctl status`).
    public static func status(_ r: P2MReport) -> String {
        var out = ""
        func kv(_ k: String, _ v: String) { out += k.padding(toLength: 14, withPad: " ", startingAt: 0) + v + "\n" }
        kv("domain", "\(r.domid)" + (r.name.map { " (\($0))" } ?? "") + "  uuid \(r.uuid)")
        kv("type", r.domainType.rawValue + (r.guestWidthBits.map { ", \($0)-bit" } ?? "") + ", backend \(r.backend)")
        kv("severity", r.severity.rawValue.uppercased() + (r.error.map { ": \($0)" } ?? ""))
        if let f = r.primaryFormat {
            var s = f.rawValue
            if let t = r.tree, t.published { s += "  tree: \(t.levels) levels, \(t.leafFrames) leaves\(t.walked ? "" : " (not walked)")" }
            if let l = r.linearList, l.published { s += "  list: \(l.levels) levels, \(l.leafFrames) leaves\(l.walked ? "" : " (not walked)")" }
            kv("p2m format", s)
        }
        if let m = r.maxPfn {
            kv("max_pfn", "published 0x\(String(m.published, radix: 16)), checked 0x\(String(m.effective, radix: 16))"
                + (m.nrGpfns.map { ", nr_gpfns 0x\(String($0, radix: 16))" } ?? ""))
        }
        kv("pages", "populated \(r.populated), tot_pages \(r.totPages), max_pages \(r.maxPages)")
        let e = r.entries
        kv("entries", "valid \(e.valid), invalid \(e.invalid), identity \(e.identity), foreign \(e.foreign), faulty \(e.faulty)")
        if let g = r.generation { kv("generation", "\(g.before) -> \(g.after)") }
        kv("migration", "\(r.migration.verdict.rawValue): \(r.migration.reason)")
        kv("scanned", "\(ISO8601DateFormatter().string(from: r.scannedAt)) in \(String(format: "%.1f", r.stats.durationMs)) ms, "
            + "\(r.stats.mapCalls) map calls, \(r.stats.framesMapped) frames, \(r.stats.retries) retries")
        if r.findings.isEmpty {
            kv("findings", "none")
        } else {
            out += "findings:\n"
            for f in r.findings {
                out += "  \(f.severity.rawValue.uppercased()) \(f.kind.rawValue) x\(f.count): \(f.summary)\n"
                for s in f.samples.prefix(3) {
                    var parts: [String] = []
                    if let v = s.pfn { parts.append("pfn 0x\(String(v, radix: 16))") }
                    if let v = s.mfn { parts.append("mfn 0x\(String(v, radix: 16))") }
                    if let v = s.expected { parts.append("expected 0x\(String(v, radix: 16))") }
                    if let v = s.found { parts.append("found 0x\(String(v, radix: 16))") }
                    if let v = s.level { parts.append("level \(v)") }
                    if let v = s.note { parts.append(v) }
                    out += "      " + parts.joined(separator: ", ") + "\n"
                }
            }
        }
        return out
    }

    /// The glyph of one pfn-map cell: the most alarming class present wins.
    public static func glyph(_ mask: UInt8) -> Character {
        typealias B = PfnMap.Bit
        if mask & B.faulty != 0 { return "X" }
        if mask & B.unreadable != 0 { return "?" }
        if mask & B.foreign != 0 { return "F" }
        if mask & B.identity != 0 { return "I" }
        if mask & B.valid != 0 && mask & B.invalid != 0 { return "+" }
        if mask & B.valid != 0 { return "#" }
        if mask & B.invalid != 0 { return "." }
        return " "
    }

    /// A terminal picture of the pfn space: rows of `width` cells, each row prefixed by the
    /// first pfn it covers, with a legend.
    public static func map(_ r: P2MReport, width: Int = 64) -> String {
        var out = "domain \(r.domid)" + (r.name.map { " (\($0))" } ?? "") + ": \(r.severity.rawValue)"
        guard let m = r.pfnMap, m.pfnsPerCell > 0 else {
            return out + "\nno pfn map in this report (\(r.error ?? "guest has no P2M to picture"))\n"
        }
        let masks = m.masks
        let w = max(8, width)
        let total = UInt64(masks.count) * m.pfnsPerCell
        out += ", \(masks.count) cells of \(m.pfnsPerCell) pfns (\(humanBytes(m.pfnsPerCell * UInt64(pageSize))) each), pfn 0..0x\(String(total, radix: 16))\n"
        let pfnWidth = max(6, String(total, radix: 16).count + 2)
        // Ruler: a tick every 8 cells, labelled with the cell offset within the row.
        var ruler = String(repeating: " ", count: pfnWidth + 1) + "|"
        var ticks = String(repeating: " ", count: pfnWidth + 1) + " "
        for i in 0..<w {
            ticks.append(i % 8 == 0 ? "+" : "-")
        }
        ruler += "cell +0" + String(repeating: " ", count: max(0, w - 14)) + "+\(w - 1)|"
        out += ruler + "\n" + ticks + "\n"
        var i = 0
        while i < masks.count {
            let pfn = UInt64(i) * m.pfnsPerCell
            let label = "0x" + String(pfn, radix: 16)
            out += String(repeating: " ", count: max(0, pfnWidth - label.count)) + label + " |"
            out += String(masks[i..<min(i + w, masks.count)].map(glyph)) + "|\n"
            i += w
        }
        out += "legend: X faulty  ? unreadable  F foreign  I identity  + valid+invalid  # valid  . invalid\n"
        let counts = Dictionary(grouping: masks.map(glyph), by: { $0 }).mapValues(\.count)
        let order: [Character] = ["X", "?", "F", "I", "+", "#", "."]
        out += "cells:  " + order.compactMap { g in counts[g].map { "\(g) \($0)" } }.joined(separator: "  ") + "\n"
        return out
    }

    public static func humanBytes(_ b: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(b)
        var u = 0
        while v >= 1024 && u < units.count - 1 {
            v /= 1024
            u += 1
        }
        return v == v.rounded() ? "\(Int(v)) \(units[u])" : String(format: "%.1f %@", v, units[u])
    }
}

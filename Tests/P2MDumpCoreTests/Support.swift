import Foundation
import P2MDumpCore
@testable import P2MEngine
@testable import P2MSimulator

/// The parts of a report that make up its verdict: everything but timing, stats,
/// generation numbers, samples and the name/uuid a dump does not record.
struct Verdict: Equatable, CustomStringConvertible {
    var type: DomainType
    var severity: Severity
    var findings: [FindingKind: UInt64]
    var entries: EntryCounts
    var populated: UInt64
    var primary: P2MFormat?
    var tree: FormatInfo?
    var list: FormatInfo?
    var maxPfnPublished: UInt64?
    var maxPfnEffective: UInt64?
    var widthBits: Int?
    var migration: MigrationVerdict

    init(_ r: P2MReport) {
        type = r.domainType
        severity = r.severity
        findings = Dictionary(uniqueKeysWithValues: r.findings.map { ($0.kind, $0.count) })
        entries = r.entries
        populated = r.populated
        primary = r.primaryFormat
        tree = r.tree
        list = r.linearList
        maxPfnPublished = r.maxPfn?.published
        maxPfnEffective = r.maxPfn?.effective
        widthBits = r.guestWidthBits
        migration = r.migration.verdict
    }

    /// Severity and migration verdict as the engine derives them from the findings.
    mutating func rederive(from live: Verdict) {
        severity = findings.keys.map(\.severity).max() ?? .ok
        if findings.keys.contains(where: { $0.severity == .critical }) {
            migration = .broken
        } else if live.migration == .broken {
            migration = tree?.walked == true ? .legacyOk : (list?.walked == true ? .needsMigrationV2 : .notReady)
        }
    }

    var description: String {
        "\(type.rawValue) \(severity.rawValue) findings=\(findings.map { "\($0.key.rawValue)=\($0.value)" }.sorted()) entries=\(entries) "
            + "populated=\(populated) primary=\(primary?.rawValue ?? "-") tree=\(String(describing: tree)) list=\(String(describing: list)) "
            + "max_pfn=\(maxPfnPublished.map { String($0) } ?? "-")/\(maxPfnEffective.map { String($0) } ?? "-") width=\(widthBits ?? 0) migration=\(migration.rawValue)"
    }
}

/// The offline verdict the live one implies, given what a dump cannot carry.
///  - tot_pages: the writer counts owned frames outside the P2M (fault pages; see
///    DumpWriter) as guest pages, so offline tot_pages = live tot_pages + structureFrames. Where the live
///    scan compared populated with tot_pages (it had a populated_mismatch, or the two were
///    equal), the offline scan reports populated_mismatch once; where the populated count
///    was unknown (an unreadable leaf, no P2M), neither compares.
///  - Xen's M2P is not in a dump: the offline M2P is .xen_p2m, written from the guest's own
///    P2M, so a live m2p_mismatch is a valid entry offline.
///  - a frame that refused to map is missing from the dump, so it has no offline M2P entry:
///    the live frame_unmappable becomes an m2p_mismatch.
///  - a dump is a snapshot: the generation cannot move (no p2m_unstable), and nr_gpfns is not
///    recorded (the published max_pfn stands in, so no max_pfn_nr_gpfns_mismatch).
func expectedOffline(live r: P2MReport, layout: DumpWriter.Layout) -> Verdict {
    let live = Verdict(r)
    var v = live
    guard r.domainType == .pv else { return v }
    if live.findings[.populatedMismatch] != nil || r.populated == r.totPages {
        v.findings[.populatedMismatch] = r.populated == r.totPages + layout.structureFrames ? nil : 1
    }
    if let n = v.findings.removeValue(forKey: .m2pMismatch) {
        // A duplicate frame fails the round trip against the dump's table too (it maps
        // the frame back to one pfn only): those mismatches stay.
        let kept = min(n, live.findings[.duplicateMfn] ?? 0)
        if kept > 0 { v.findings[.m2pMismatch] = kept }
        v.entries.valid += n - kept
        v.entries.faulty -= n - kept
    }
    if let n = v.findings.removeValue(forKey: .frameUnmappable) {
        v.findings[.m2pMismatch, default: 0] += n
    }
    v.findings[.p2mUnstable] = nil
    v.findings[.maxPfnNrGpfnsMismatch] = nil
    v.rederive(from: live)
    return v
}

func kinds(_ r: P2MReport) -> Set<FindingKind> { Set(r.findings.map(\.kind)) }

func scanLive(_ h: SimulatedHost, _ domid: DomID, probe: Bool) -> P2MReport {
    var o = ScanOptions()
    o.probeDataFrames = probe
    return P2MScanner(host: h, options: o).scan(domid)
}

func scanCore(_ path: String, domid: DomID, probe: Bool, core: CoreDumpOptions? = nil) throws -> P2MReport {
    var o = ScanOptions()
    o.probeDataFrames = probe
    return try checkCore(path: path, options: o, core: core ?? CoreDumpOptions(domid: domid))
}

/// The error opening a dump as a host throws (nil: it opened).
func openError(_ path: String, _ options: CoreDumpOptions = CoreDumpOptions()) -> CoreDumpError? {
    do {
        _ = try CoreDumpHost(path: path, options: options)
        return nil
    } catch {
        return error
    }
}

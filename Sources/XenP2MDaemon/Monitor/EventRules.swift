import P2MEngine
import XenP2MAPI

/// An event the rules decided on, before the hub numbers, stores and broadcasts it.
struct EventDraft: Equatable, Sendable {
    var kind: EventKind
    var domid: DomID
    var name: String?
    var uuid: String?
    var severity: Severity?
    var previous: String?
    var current: String?
    var message: String
}

/// The rules that turn what the daemon learns about a domain into events, and their
/// wording: pure functions, so every rule is testable without a poll loop.
enum EventRules {
    /// What a finished scan changed for its domain.
    ///
    /// - `latest`: the domain's previous report (nil: this is its first).
    /// - `lastScanned`: the latest report that is not a scan error. A failed scan (M2P not
    ///   mappable, frames refusing to map) knows nothing of the P2M's format, stability or
    ///   size, so those changes are judged between successful scans only.
    static func afterScan(latest: P2MReport?, lastScanned: P2MReport?, current r: P2MReport) -> [EventDraft] {
        var out: [EventDraft] = []
        let label = r.name.map { "\(r.domid) (\($0))" } ?? "\(r.domid)"
        func add(_ kind: EventKind, previous: String? = nil, current: String? = nil, _ message: String) {
            out.append(EventDraft(kind: kind, domid: r.domid, name: r.name, uuid: r.uuid, severity: r.severity,
                                  previous: previous, current: current, message: message))
        }
        if let last = latest, last.severity != r.severity {
            add(.severityChanged, previous: last.severity.rawValue, current: r.severity.rawValue,
                "domain \(label): \(last.severity.rawValue) -> \(r.severity.rawValue)" + why(r))
        }
        if r.severity != .error, let prev = lastScanned {
            if prev.primaryFormat != r.primaryFormat {
                let was = prev.primaryFormat?.rawValue ?? "none", now = r.primaryFormat?.rawValue ?? "none"
                add(.formatChanged, previous: was, current: now, "domain \(label): P2M format \(was) -> \(now)")
            }
            let wasUnstable = prev.count(.p2mUnstable) > 0
            let isUnstable = r.count(.p2mUnstable) > 0
            if wasUnstable != isUnstable {
                add(isUnstable ? .becameUnstable : .becameStable, isUnstable
                    ? "domain \(label): P2M kept changing during every retry of the walk"
                    : "domain \(label): P2M stable again")
            }
            if prev.populated != r.populated {
                add(.memoryChanged, previous: "\(prev.populated)", current: "\(r.populated)",
                    "domain \(label): populated pages \(prev.populated) -> \(r.populated)")
            }
        }
        if latest == nil {
            add(.domainNew, current: r.severity.rawValue, "domain \(label) found: \(r.severity.rawValue)" + why(r))
        }
        return out
    }

    /// The domain left the host's list (`why`: "destroyed", `HostError.vanishedDuringScan`).
    static func gone(_ domid: DomID, latest: P2MReport?, uuid: String, why: String) -> EventDraft {
        EventDraft(kind: .domainGone, domid: domid, name: latest?.name, uuid: uuid, severity: latest?.severity,
                   previous: latest?.severity.rawValue,
                   message: "domain \(domid)\(latest?.name.map { " (\($0))" } ?? "") \(why)")
    }

    /// A known domid now carries another UUID: the guest `oldUUID` is gone.
    static func reused(_ domid: DomID, latest: P2MReport?, oldUUID: String, newUUID: String) -> EventDraft {
        EventDraft(kind: .domainReused, domid: domid, name: latest?.name, uuid: newUUID, severity: nil,
                   previous: oldUUID, current: newUUID,
                   message: "domid \(domid) reused: guest \(oldUUID) is gone, \(newUUID) took its id")
    }

    /// The domain is dying or shut down (`why`) and is no longer scanned.
    static func stopping(_ domid: DomID, name: String?, latest: P2MReport?, uuid: String, why: String) -> EventDraft {
        EventDraft(kind: .domainStopping, domid: domid, name: name, uuid: uuid, severity: latest?.severity,
                   current: why, message: "domain \(domid) is \(why): no longer scanned")
    }

    /// " (error)" or " (finding kinds)" after a verdict, or nothing for a clean report.
    static func why(_ r: P2MReport) -> String {
        if let e = r.error { return " (\(e))" }
        let kinds = r.findings.map(\.kind.rawValue)
        return kinds.isEmpty ? "" : " (\(kinds.joined(separator: ", ")))"
    }
}

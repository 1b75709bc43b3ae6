import Foundation
@testable import P2MEngine
import P2MSimulator
import Testing
import XenP2MAPI
@testable import XenP2MDaemon

/// The event rules case by case, as the pure function they are: (what was known before,
/// the new report) -> events. The end-to-end tests see the same rules through a daemon.
@Suite struct EventRulesTests {
    /// A real report of a clean guest, to be changed one field at a time.
    static let base: P2MReport = {
        let host = SimulatedHost(memoryGiB: 1)
        try! host.createGuest(.linux(domid: 7, name: "web", memoryMiB: 32))
        return P2MScanner(host: host).scan(7)
    }()

    static func with(_ change: (inout P2MReport) -> Void) -> P2MReport {
        var r = base
        change(&r)
        return r
    }

    static let unstable = Finding(kind: .p2mUnstable, severity: FindingKind.p2mUnstable.severity, count: 1,
                                  summary: FindingKind.p2mUnstable.summary, samples: [])

    func kinds(_ events: [EventDraft]) -> [EventKind] { events.map(\.kind) }

    @Test func baseReportIsCleanAndOK() {
        #expect(Self.base.severity == .ok)
        #expect(Self.base.findings.isEmpty)
        #expect(Self.base.primaryFormat != nil)
    }

    @Test func firstReportAnnouncesTheDomainAndNothingElse() {
        let e = EventRules.afterScan(latest: nil, lastScanned: nil, current: Self.base)
        #expect(kinds(e) == [.domainNew])
        #expect(e[0].domid == 7 && e[0].name == "web" && e[0].current == "ok")
        #expect(e[0].message == "domain 7 (web) found: ok")
    }

    @Test func firstReportThatFailedSaysWhy() {
        let failed = Self.with { $0.severity = .error; $0.error = "cannot map the M2P" }
        let e = EventRules.afterScan(latest: nil, lastScanned: nil, current: failed)
        #expect(kinds(e) == [.domainNew])
        #expect(e[0].message == "domain 7 (web) found: error (cannot map the M2P)")
    }

    @Test func unchangedReportMakesNoEvent() {
        #expect(EventRules.afterScan(latest: Self.base, lastScanned: Self.base, current: Self.base).isEmpty)
    }

    @Test func severityChangeNamesBothAndTheFindings() {
        let now = Self.with {
            $0.severity = .critical
            $0.findings = [Finding(kind: .m2pMismatch, severity: .critical, count: 3, summary: "", samples: [])]
        }
        let e = EventRules.afterScan(latest: Self.base, lastScanned: Self.base, current: now)
        #expect(kinds(e) == [.severityChanged])
        #expect(e[0].previous == "ok" && e[0].current == "critical" && e[0].severity == .critical)
        #expect(e[0].message == "domain 7 (web): ok -> critical (m2p_mismatch)")
    }

    @Test func failedScanChangesSeverityButJudgesNothingElse() {
        // A failed scan knows nothing of format, stability or size: only its severity counts.
        let failed = Self.with {
            $0.severity = .error
            $0.error = "frames refuse to map"
            $0.primaryFormat = nil
            $0.populated = 0
        }
        let e = EventRules.afterScan(latest: Self.base, lastScanned: Self.base, current: failed)
        #expect(kinds(e) == [.severityChanged])
        #expect(e[0].message == "domain 7 (web): ok -> error (frames refuse to map)")
    }

    @Test func changesAcrossAFailedScanAreJudgedAgainstTheLastGoodOne() {
        let failed = Self.with { $0.severity = .error; $0.error = "x"; $0.populated = 0 }
        let grown = Self.with { $0.populated = Self.base.populated + 256 }
        let e = EventRules.afterScan(latest: failed, lastScanned: Self.base, current: grown)
        #expect(kinds(e) == [.severityChanged, .memoryChanged])
        let mem = e[1]
        #expect(mem.previous == "\(Self.base.populated)" && mem.current == "\(Self.base.populated + 256)")
        #expect(mem.message == "domain 7 (web): populated pages \(Self.base.populated) -> \(Self.base.populated + 256)")
    }

    @Test func formatChange() {
        let now = Self.with { $0.primaryFormat = $0.primaryFormat == .tree ? .linearList : .tree }
        let e = EventRules.afterScan(latest: Self.base, lastScanned: Self.base, current: now)
        #expect(kinds(e) == [.formatChanged])
        #expect(e[0].previous == Self.base.primaryFormat?.rawValue && e[0].current == now.primaryFormat?.rawValue)
        let lost = Self.with { $0.primaryFormat = nil }
        let gone = EventRules.afterScan(latest: Self.base, lastScanned: Self.base, current: lost)
        #expect(gone.first?.current == "none")
    }

    @Test func becomingUnstableAndStableAgain() {
        let shaky = Self.with { $0.severity = .warning; $0.findings = [Self.unstable] }
        let worse = EventRules.afterScan(latest: Self.base, lastScanned: Self.base, current: shaky)
        #expect(kinds(worse) == [.severityChanged, .becameUnstable])
        #expect(worse[1].message == "domain 7 (web): P2M kept changing during every retry of the walk")
        let better = EventRules.afterScan(latest: shaky, lastScanned: shaky, current: Self.base)
        #expect(kinds(better) == [.severityChanged, .becameStable])
        #expect(better[1].message == "domain 7 (web): P2M stable again")
        // Still unstable: no news.
        #expect(EventRules.afterScan(latest: shaky, lastScanned: shaky, current: shaky).isEmpty)
    }

    @Test func memoryChangeIsNotAnIncident() {
        let grown = Self.with { $0.populated += 1 }
        let e = EventRules.afterScan(latest: Self.base, lastScanned: Self.base, current: grown)
        #expect(kinds(e) == [.memoryChanged])
        #expect(!e[0].kind.isIncident)
    }

    @Test func unnamedDomainIsLabelledByItsID() {
        let anon = Self.with { $0.name = nil }
        #expect(EventRules.afterScan(latest: nil, lastScanned: nil, current: anon)[0].message == "domain 7 found: ok")
    }

    @Test func lifecycleWording() {
        let gone = EventRules.gone(7, latest: Self.base, uuid: Self.base.uuid, why: "destroyed")
        #expect(gone.kind == .domainGone && gone.previous == "ok" && gone.message == "domain 7 (web) destroyed")
        let reused = EventRules.reused(7, latest: Self.base, oldUUID: "a", newUUID: "b")
        #expect(reused.kind == .domainReused && reused.previous == "a" && reused.current == "b" && reused.uuid == "b")
        #expect(reused.message == "domid 7 reused: guest a is gone, b took its id")
        let stopping = EventRules.stopping(7, name: "web", latest: nil, uuid: "b", why: "dying")
        #expect(stopping.kind == .domainStopping && stopping.current == "dying" && stopping.severity == nil)
        #expect(stopping.message == "domain 7 is dying: no longer scanned")
    }
}

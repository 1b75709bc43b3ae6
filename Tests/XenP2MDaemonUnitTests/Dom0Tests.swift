import Foundation
import Logging
import P2MEngine
import P2MSimulator
import Prometheus
import Testing
import XenP2MAPI
@testable import XenP2MDaemon

/// A simulated host that behaves like Xen seen from dom0: it calls itself "xen", marks
/// domain 0 as the caller and refuses to map it (ESRCH, as the hypervisor does).
final class Dom0Host: P2MHost, @unchecked Sendable {
    let inner: SimulatedHost
    init(_ inner: SimulatedHost) { self.inner = inner }

    var backendName: String { "xen" }
    func listDomains() throws(HostError) -> [DomainInfo] { try inner.listDomains().map(mark) }
    func domainInfo(_ domid: DomID) throws(HostError) -> DomainInfo { mark(try inner.domainInfo(domid)) }
    func guestWidth(_ domid: DomID) throws(HostError) -> GuestWidth { try inner.guestWidth(domid) }
    func nrGpfns(_ domid: DomID) throws(HostError) -> UInt64 { try inner.nrGpfns(domid) }
    func maxMFN() throws(HostError) -> UInt64 { try inner.maxMFN() }
    func sharedInfoPage(_ domid: DomID, frame: UInt64) throws(HostError) -> [UInt8] {
        if domid == 0 { throw .system(operation: "map shared info frame of domain 0", errno: ESRCH) }
        return try inner.sharedInfoPage(domid, frame: frame)
    }
    func mapFrames(_ domid: DomID, _ mfns: UnsafeBufferPointer<UInt64>) throws(HostError) -> FrameMapping {
        if domid == 0 { throw .system(operation: "map frames of domain 0", errno: ESRCH) }
        return try inner.mapFrames(domid, mfns)
    }
    func mapM2P(maxMFN: UInt64) throws(HostError) -> M2PMapping { try inner.mapM2P(maxMFN: maxMFN) }
    func domainName(_ domid: DomID) -> String? { domid == 0 ? "Domain-0" : inner.domainName(domid) }

    private func mark(_ info: DomainInfo) -> DomainInfo {
        var i = info
        i.isCaller = info.domid == 0
        return i
    }
}

/// The poll loop has no special case for dom0: the backend says it is the caller, the
/// scanner answers not_applicable, and the daemon lists it like any other domain.
@Suite struct Dom0Tests {
    @Test func dom0IsListedAsNotApplicableAlsoAfterAManualScan() async throws {
        let sim = SimulatedHost(memoryGiB: 1)
        try sim.createGuest(.linux(domid: 0, name: "Domain-0", memoryMiB: 64))
        try sim.createGuest(.linux(domid: 3, name: "web", memoryMiB: 32))
        let registry = PrometheusCollectorRegistry()
        let metrics = DaemonMetrics(registry: registry)
        var config = DaemonConfig()
        config.scanBudgetFramesPerSecond = 0
        let hub = EventHub(log: nil)
        let m = Monitor(host: Dom0Host(sim), settings: LiveSettings(config, group: nil), hub: hub, metrics: metrics,
                        logger: Logger(label: "test"))
        await m.poll()
        let manual = try await m.scanNow(0, timeout: 30)
        #expect(manual.severity == .notApplicable)
        await m.poll()
        await m.poll()
        let list = await m.summaries()
        let dom0 = try #require(list.first { $0.domid == 0 }, "dom0 missing from \(list.map(\.domid))")
        #expect(dom0.severity == .notApplicable)
        #expect(list.first { $0.domid == 3 }?.severity == .ok)
        #expect(try await m.report(0).migration.reason.contains("the domain this check runs in"))
        // Not an error anywhere: health's worst severity and the events agree.
        #expect(await m.health().worstSeverity == .ok)
        #expect(!hub.subscribe(since: 0, follow: false).backlog.contains { $0.severity == .error })
        // The metrics label the domain the backend named as the caller.
        #expect(metrics.callingDomain == 0)
        #expect(metrics.text().contains("calling_domain=\"true\""))
    }
}

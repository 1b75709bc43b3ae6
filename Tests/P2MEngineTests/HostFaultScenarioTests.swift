import Foundation
import P2MConfig
import Testing
@testable import P2MEngine
@testable import P2MSimulator

/// Faults of the simulated host itself (scenario `host.faults`): listing domains and
/// mapping the M2P fail, or the M2P mapping comes back short, for a window of calls.
@Suite("Host faults from the scenario file")
struct HostFaultScenarioTests {
    static let yaml = """
        host:
          memory_gib: 1
          faults:
            - {kind: list_domains_fails, errno: EPERM, after_calls: 1, count: 2}
            - {kind: m2p_map_fails, errno: ENOMEM, after_calls: 1, count: 1}
            - {kind: m2p_map_short, after_calls: 2, count: 1, entries: 16}
        domains:
          - {domid: 1, name: one, memory_mib: 64}
        """

    @Test func parsesWithDefaults() throws {
        let s = try Scenario.parse(Self.yaml, file: "s.yaml")
        #expect(s.hostFaults == [
            HostFault(kind: .listDomainsFails, errno: EPERM, after: 1, count: 2),
            HostFault(kind: .m2pMapFails, errno: ENOMEM, after: 1, count: 1),
            HostFault(kind: .m2pMapShort, errno: 0, after: 2, count: 1, entries: 16),
        ])
        let d = try Scenario.parse("host:\n  faults: [{kind: list_domains_fails}, {kind: m2p_map_fails}]\ndomains: []\n", file: "d.yaml")
        #expect(d.hostFaults == [HostFault(kind: .listDomainsFails, errno: EIO), HostFault(kind: .m2pMapFails, errno: EFAULT)])
        #expect(d.hostFaults.allSatisfy { $0.count == nil && $0.hits(call: 1) && $0.hits(call: 1000) })
    }

    @Test("host fault errors name the line and key")
    func errors() {
        func error(_ faults: String) -> ConfigError? {
            do { _ = try Scenario.parse("host:\n  faults:\n    - \(faults)\ndomains: []\n", file: "s.yaml"); return nil } catch { return error }
        }
        #expect(error("{kind: list_domain_fails}")?.description.contains("not one of") == true)
        #expect(error("{kind: list_domains_fails, errno: ENOSPC}")?.key == "host.faults[0].errno")
        #expect(error("{kind: m2p_map_fails, after: 3}")?.description.contains("unknown key") == true)
        #expect(error("{kind: m2p_map_fails, count: 0}")?.key == "host.faults[0].count")
        #expect(error("{kind: m2p_map_short, errno: EIO}")?.key == "host.faults[0].errno")
        #expect(error("{kind: list_domains_fails, entries: 3}")?.key == "host.faults[0].entries")
        #expect(error("{errno: EIO}")?.line == 3)
    }

    @Test func listingFailsForItsWindowOnly() throws {
        let fleet = try SimulatedFleet(Scenario.parse(Self.yaml, file: "s.yaml"))
        let h = fleet.host
        #expect(try h.listDomains().map(\.domid) == [1])
        for _ in 0..<2 {
            #expect(throws: HostError.system(operation: "list domains from domid 0", errno: EPERM)) { try h.listDomains() }
        }
        #expect(try h.listDomains().map(\.domid) == [1])
        // Only the listing: the domain itself still answers.
        #expect(try h.domainInfo(1).domid == 1)
    }

    /// A failed M2P map is a scan error naming the call, never findings; a short mapping
    /// is refused by the scanner rather than turned into mfn_out_of_range for every frame
    /// above its end.
    @Test func m2pFailuresAreScanErrorsNotFindings() throws {
        let fleet = try SimulatedFleet(Scenario.parse(Self.yaml, file: "s.yaml"))
        let h = fleet.host
        let first = scan(h, 1)
        #expect(first.severity == .ok && first.findings.isEmpty)

        let failed = scan(h, 1)
        #expect(failed.severity == .error)
        #expect(failed.findings.isEmpty)
        #expect(failed.error == "map the M2P table up to MFN 0x3ffff failed: ENOMEM (Cannot allocate memory)")
        #expect(failed.migration.verdict == .unknown)

        let short = scan(h, 1)
        #expect(short.severity == .error)
        #expect(short.findings.isEmpty)
        #expect(short.error?.contains("the mapping has 16 entries, not 262144") == true, "\(short.error ?? "")")

        let again = scan(h, 1)
        #expect(again.severity == .ok && again.findings.isEmpty)
    }
}

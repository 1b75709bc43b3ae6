import P2MConfig
import P2MEngine
import P2MSimulator
import Testing

/// `churn:` scenarios (scripts/soak.sh): every step does what it says, as the scanner sees it.
struct ChurnTests {
    static let yaml = """
        host:
          memory_gib: 2
        domains:
          - {domid: 1, name: fixed, memory_mib: 64}
        churn:
          first_domid: 10
          last_domid: 13
          max_domains: 3
          memory_mib: 16
        """

    @Test func everyStepIsSeenByTheScanner() throws {
        let fleet = try SimulatedFleet(Scenario.parse(Self.yaml, file: "c.yaml"))
        var corrupted: [DomID: UInt64] = [:]
        var seen: Set<String> = []
        var names: [DomID: Set<String>] = [:]
        for _ in 0..<300 {
            try fleet.tick()
            let step = try #require(fleet.churnLog.last)
            switch step {
            case .created(let d, let name):
                #expect((10...13).contains(d))
                names[d, default: []].insert(name)
                #expect(scan(fleet.host, d).severity == .ok, "\(step)")
                seen.insert("created")
            case .destroyed(let d):
                #expect(!fleet.host.domids.contains(d))
                corrupted[d] = nil
                seen.insert("destroyed")
            case .corrupted(let d, let pfn):
                corrupted[d] = pfn
                let r = scan(fleet.host, d)
                #expect(kinds(r) == [.m2pMismatch], "\(step)")
                #expect(r.findings.first?.samples.first?.pfn == pfn)
                seen.insert("corrupted")
            case .repaired(let d, _):
                corrupted[d] = nil
                #expect(scan(fleet.host, d).severity == .ok, "\(step)")
                seen.insert("repaired")
            }
            let churned = fleet.host.domids.filter { $0 != 1 }
            #expect(churned.count <= 3)
            #expect(fleet.host.domids.contains(1), "the scenario's own domain is never touched")
        }
        #expect(seen == ["created", "destroyed", "corrupted", "repaired"])
        // Domids are reused, each time as a new guest.
        #expect(names.values.contains { $0.count > 1 })
        #expect(scan(fleet.host, 1).severity == .ok)
    }

    @Test func churnSettingsAreChecked() {
        for (text, key) in [("churn: {first_domid: 1}\n", "first_domid"), ("churn: {first_domid: 9, last_domid: 3}\n", "last_domid"),
                            ("churn: {max_domains: 0}\n", "max_domains"), ("churn: {memory_mib: 1}\n", "memory_mib"),
                            ("churn: {spin: 3}\n", "spin")] {
            let doc = "domains:\n  - {domid: 1, memory_mib: 16}\n" + text
            #expect("\(text)", performing: { try Scenario.parse(doc, file: "c.yaml") },
                    throws: { "\($0)".contains(key) })
        }
    }
}

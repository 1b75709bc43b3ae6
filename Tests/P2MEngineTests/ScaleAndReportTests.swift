import Foundation
import P2MConfig
import Testing
@testable import P2MEngine
@testable import P2MSimulator

@Suite("Large guests, ballooning, report contract, scenario files")
struct ScaleAndReportTests {
    @Test("1 TiB sparse guest (4 GiB populated), linear list only")
    func oneTebibyteSparse() throws {
        let h = host(8)
        try h.createGuest(.linux(domid: 10, name: "tera", memoryMiB: 4096, maxMiB: 1 << 20, formats: .listOnly))
        let clock = ContinuousClock()
        let t0 = clock.now
        let r = scan(h, 10)
        let took = clock.now - t0
        print("1 TiB sparse guest scan: \(took), \(r.stats.mapCalls) map calls, \(r.stats.framesMapped) frames")
        #expect(r.findings.isEmpty, "\(r.findings)")
        #expect(r.maxPfn?.published == 1 << 28)
        #expect(r.entries.valid == 1 << 20)
        #expect(r.migration.verdict == .needsMigrationV2)
        #expect(r.tree == nil)
        // The host holds only what the guest populated plus its P2M structure.
        #expect(h.framesInUse < (1 << 20) + 4096)
    }

    @Test("> 512 GiB guest publishing only the linear list")
    func beyondTreeLinearOnly() throws {
        let h = host(4)
        try h.createGuest(.linux(domid: 11, name: "big", memoryMiB: 1024, maxMiB: 600 << 10, formats: .listOnly))
        let r = scan(h, 11)
        #expect(r.findings.isEmpty)
        #expect(r.maxPfn!.published > 1 << 27)
        #expect(r.migration.verdict == .needsMigrationV2)
        #expect(r.migration.reason.contains("migration-v2"))
    }

    @Test func treeGuestIsLegacyOk() throws {
        let h = host(1)
        try h.createGuest(.linux(domid: 1, name: "small", memoryMiB: 256))
        let r = scan(h, 1)
        #expect(r.migration.verdict == .legacyOk)
        #expect(r.tree?.walked == true && r.linearList?.walked == true)
        #expect(r.primaryFormat == .linearList)
        #expect(r.populated == r.totPages)
    }

    @Test("map calls stay within leaves/batch + structure levels")
    func mapCallBudget() throws {
        let h = host(4)
        try h.createGuest(.linux(domid: 1, name: "g", memoryMiB: 2048, formats: .listOnly))
        for batch in [64, 256, 1000] {
            let r = scan(h, 1) { $0.batchFrames = batch; $0.predictToolstack = false }
            let leaves = r.linearList!.leafFrames
            let bound = (leaves + UInt64(batch) - 1) / UInt64(batch) + UInt64(r.linearList!.levels) + 1
            #expect(r.stats.mapCalls <= bound, "batch \(batch): \(r.stats.mapCalls) > \(bound)")
            // The toolstack prediction walks the structure twice more (save and dump-core
            // paths) and reuses the scan's leaf mappings: a constant on top, not per leaf.
            let p = scan(h, 1) { $0.batchFrames = batch }
            let levels = UInt64(r.linearList!.levels)
            #expect(p.stats.mapCalls <= bound + 2 * levels + 2, "batch \(batch) with prediction: \(p.stats.mapCalls) > \(bound + 2 * levels + 2)")
        }
    }

    @Test func trimmedMaxPfnIsReported() throws {
        let h = host(2)
        try h.createGuest(.linux(domid: 2, name: "balloon", memoryMiB: 512, maxMiB: 16384))
        let r = scan(h, 2)
        #expect(r.findings.isEmpty)
        #expect(r.maxPfn!.published == 16384 << 8)
        #expect(r.maxPfn!.effective < r.maxPfn!.published)
        #expect(r.maxPfn!.effective >= 512 << 8)
    }

    @Test func ballooningBumpsGenerationAndStaysConsistent() throws {
        let h = host(4)
        try h.createGuest(.linux(domid: 2, name: "b", memoryMiB: 512, maxMiB: 4096))
        let before = scan(h, 2)
        try h.balloon(2, toPages: 2048 << 8)
        let up = scan(h, 2)
        #expect(up.findings.isEmpty, "\(up.findings)")
        #expect(up.generation!.before > before.generation!.before)
        #expect(up.generation!.before % 2 == 0)
        #expect(up.entries.valid == 2048 << 8)
        try h.balloon(2, toPages: 256 << 8)
        let down = scan(h, 2)
        #expect(down.findings.isEmpty, "\(down.findings)")
        #expect(down.totPages == 256 << 8)
        #expect(down.populated == 256 << 8)
    }

    @Test("JSON has the contract keys and round-trips")
    func jsonContract() throws {
        let h = host(2)
        try h.createGuest(.linux(domid: 6, name: "j", memoryMiB: 64))
        try h.inject(.m2pMismatch(pfn: 10), into: 6)
        let r = scan(h, 6)
        let data = try P2MReport.encoder().encode(r)
        let obj = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(obj["schema"] as? Int == 1)
        #expect(obj["domid"] as? Int == 6)
        #expect(obj["severity"] as? String == "critical")
        let findings = try #require(obj["findings"] as? [[String: Any]])
        #expect(findings.first?["kind"] as? String == "m2p_mismatch")
        #expect(findings.first?["count"] as? Int == 1)
        let samples = try #require(findings.first?["samples"] as? [[String: Any]])
        #expect(samples.first?["pfn"] as? Int == 10)
        #expect(obj["migration"] is [String: Any] && obj["stats"] is [String: Any] && obj["max_pfn"] is [String: Any])
        let back = try P2MReport.decoder().decode(P2MReport.self, from: data)
        #expect(back.findings == r.findings && back.domid == r.domid && back.maxPfn == r.maxPfn)
    }

    @Test func everyFindingKindHasAStableSnakeCaseName() {
        for k in FindingKind.allCases {
            #expect(k.rawValue.allSatisfy { $0.isLowercase || $0 == "_" || $0.isNumber }, "\(k.rawValue)")
            #expect(!k.summary.isEmpty)
        }
    }

    @Test func demoFleetFileMatchesBuiltIn() throws {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let file = try String(contentsOf: repo.appendingPathComponent("config/demo-fleet.yaml"), encoding: .utf8)
        #expect(file == DemoFleet.yaml)
    }

    @Test func demoFleetVerdicts() throws {
        let fleet = try SimulatedFleet.demo()
        let scanner = P2MScanner(host: fleet.host)
        let reports = Dictionary(uniqueKeysWithValues: fleet.host.domids.map { ($0, scanner.scan($0)) })
        #expect(reports[1]?.severity == .ok && reports[1]?.migration.verdict == .legacyOk)
        #expect(reports[2]?.severity == .ok)
        #expect(reports[3]?.migration.verdict == .needsMigrationV2)
        #expect(reports[4]?.guestWidthBits == 32 && reports[4]?.severity == .ok)
        #expect(reports[5]?.severity == .notApplicable)
        #expect(reports[6].map(kinds) == [.m2pMismatch, .duplicateMfn, .treeListMismatch])
        // Ballooning moves the guest without breaking it.
        for _ in 0..<6 {
            try fleet.tick()
            #expect(scanner.scan(2).findings.isEmpty)
        }
    }

    @Test("scenario errors name the line and key")
    func scenarioErrors() {
        func error(_ text: String) -> ConfigError? {
            do { _ = try Scenario.parse(text, file: "s.yaml"); return nil } catch { return error }
        }
        let unknown = error("host:\n  memory_gib: 4\ndomains:\n  - domid: 1\n    memroy_mib: 5\n")
        #expect(unknown?.line == 5)
        #expect(unknown?.description.contains("memroy_mib") == true)
        let badWidth = error("domains:\n  - domid: 1\n    memory_mib: 5\n    width: 16\n")
        #expect(badWidth?.line == 4 && badWidth?.key == "domains[0].width")
        #expect(error("domains: [\n")?.description.contains("not valid YAML") == true)
        #expect(error("domains:\n  - {domid: 1, memory_mib: 4}\n  - {domid: 1, memory_mib: 4}\n")?.description.contains("twice") == true)
        #expect(error("domains:\n  - {domid: 1, memory_mib: 4, faults: [{kind: nope}]}\n")?.description.contains("not one of") == true)
        #expect(error("domains:\n  - {domid: 1, memory_mib: 8, maxmem_mib: 4}\n")?.key == "domains[0].maxmem_mib")
        #expect(throws: ConfigError.self) { try Scenario.load(path: "/nonexistent/fleet.yaml") }
    }

    @Test func sharedInfoLayoutRoundTrips() {
        for w in [GuestWidth.bits32, .bits64] {
            let si = ArchSharedInfo(maxPfn: 0x10000, frameListList: .max, p2mCr3: CR3.fromMFN(0xbd010, width: w), p2mVaddr: 0xc800_0000, p2mGeneration: 4)
            var page = [UInt8](repeating: 0, count: 4096)
            si.write(into: &page, width: w)
            #expect(ArchSharedInfo(page: page, width: w) == si)
            #expect(CR3.mfn(si.p2mCr3, width: w) == 0xbd010)
        }
        // A 32-bit INVALID fll widens to the 64-bit INVALID, not to 0xffffffff.
        var page = [UInt8](repeating: 0, count: 4096)
        for i in 0..<4 { page[2320 + i] = 0xff }
        #expect(ArchSharedInfo(page: page, width: .bits32)?.frameListList == .max)
        #expect(ArchSharedInfo(page: [0, 1], width: .bits64) == nil)
    }
}

import Foundation
import Testing
import P2MEngine
import P2MFuzzSupport

/// Every input the guest-memory fuzzer (scripts/fuzz.sh) ever stopped on, replayed through
/// the same decoder and invariants, plus the seed corpus. Fuzz/regressions/ holds the
/// saved inputs; the named tests below say what each one caught.
@Suite("Fuzz regressions: saved fuzzer inputs keep passing every invariant")
struct FuzzRegressionTests {
    static let fuzzDir = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    static func input(_ dir: String, _ name: String) throws -> [UInt8] {
        let url = fuzzDir.appendingPathComponent(dir).appendingPathComponent(name)
        return Array(try Data(contentsOf: url))
    }

    static func files(_ dir: String) -> [String] {
        let path = fuzzDir.appendingPathComponent(dir).path
        return ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
    }

    @Test("saved crash inputs", arguments: files("regressions"))
    func regression(_ name: String) throws {
        let v = FuzzHarness.run(try Self.input("regressions", name))
        #expect(v.isEmpty, "\(name): \(v)")
    }

    /// The empty input decodes to a raw guest whose nr_gpfns is 0: the dump-core model
    /// asked the host for a map of no frames (libxenguest's own call fails with EINVAL).
    @Test func emptyInput() {
        let v = FuzzHarness.run([])
        #expect(v.isEmpty, "\(v)")
    }

    @Test("seed corpus", arguments: files("corpus"))
    func seed(_ name: String) throws {
        let v = FuzzHarness.run(try Self.input("corpus", name))
        #expect(v.isEmpty, "\(name): \(v)")
    }

    @Test func committedSeedsMatchTheGenerator() throws {
        for (name, bytes) in FuzzSeeds.all {
            #expect(try Self.input("corpus", name) == bytes, "Fuzz/corpus/\(name) is stale: rerun P2MFuzz --write-seeds Fuzz/corpus")
        }
    }

    /// The hand-built raw guests are valid: the raw decoder builds real P2Ms, so fuzzing
    /// starts from layouts the engine walks to the end.
    @Test func rawValidSeedsScanClean() throws {
        for name in ["raw-tree64", "raw-tree32", "raw-list64", "raw-both64"] {
            let out = FuzzHarness.execute(try Self.input("corpus", name))
            let r = try #require(out.reports.first)
            // These hand-built layouts keep their P2M pages outside the guest's pfns (no
            // M2P entry names them), which libxenguest refuses: that one finding, and the
            // save failure it predicts, are expected; nothing else.
            let other = r.findings.filter { $0.kind != .p2mFrameOutsidePhysmap }
            #expect(other.isEmpty, "\(name): \(other.map(\.kind))")
            if r.count(.p2mFrameOutsidePhysmap) > 0 {
                #expect(r.toolstack?.prediction(.save)?.messages.first?.hasPrefix("Bad mfn in p2m_frame_list[") == true, "\(name)")
            }
            #expect(r.populated == r.totPages, "\(name)")
        }
        let both = try #require(FuzzHarness.execute(try Self.input("corpus", "raw-both64")).reports.first)
        #expect(both.tree?.walked == true && both.linearList?.walked == true)
    }

    /// Engine bug found by the fuzzer: with max_pfn = 0 and a p2m_vaddr that is not
    /// aligned to a top-level entry, the walker read the page-table entry just below the
    /// (empty) range and reported pte_not_present on a healthy guest.
    /// Fixed in RadixWalker.walk: the range guard is now `vpnEnd > max(vpnBase, vpnStart)`.
    @Test func emptyListAtUnalignedVaddrIsHealthy() throws {
        let out = FuzzHarness.execute(try Self.input("regressions", "empty-list-unaligned-vaddr"))
        let r = try #require(out.reports.first)
        #expect(r.findings.isEmpty, "\(r.findings.map(\.kind))")
        #expect(r.maxPfn?.effective == 0)
    }
}

import Foundation
import Testing
@testable import P2MEngine
@testable import P2MSimulator

/// The duplicate bitmap is reused between scans (MFNBitmapPool): a scan must start from
/// an empty bitmap whatever the previous scan on the same scanner saw.
@Suite("MFN bitmap reuse across scans")
struct BitmapReuseTests {
    func allZero(_ b: MFNBitmap) -> Bool {
        (0..<b.wordCount).allSatisfy { b.words[$0] == 0 } && (0..<b.chunkCount).allSatisfy { b.dirty[$0] == 0 }
    }

    @Test func reusedBitmapGivesTheSameVerdictsAsAFreshOne() throws {
        let h = host(4)
        try h.createGuest(.linux(domid: 1, name: "healthy", memoryMiB: 256))
        try h.createGuest(.linux(domid: 2, name: "dup", memoryMiB: 256))
        try h.inject(.duplicateMfn(pfn: 4000, sameAs: 17), into: 2)
        let shared = P2MScanner(host: h)
        // Order matters: a bitmap left dirty by 1 would make 1's frames duplicates in a
        // second scan of 1, and one left dirty by 2 would too.
        for domid in [1, 2, 1, 2, 1] as [DomID] {
            let reused = shared.scan(domid)
            let fresh = P2MScanner(host: h).scan(domid)
            #expect(kinds(reused) == kinds(fresh), "domain \(domid)")
            #expect(reused.entries == fresh.entries, "domain \(domid)")
            #expect(shared.bitmaps.idleBytes > 0)
        }
        #expect(kinds(shared.scan(1)).isEmpty)
        #expect(kinds(shared.scan(2)).contains(.duplicateMfn))
    }

    @Test func bitmapIsEmptyAfterEveryScanAndAfterRelax() throws {
        let h = host(2)
        try h.createGuest(.linux(domid: 5, name: "g", memoryMiB: 128))
        try h.inject(.duplicateMfn(pfn: 100, sameAs: 3), into: 5)
        let s = P2MScanner(host: h)
        _ = s.scan(5)
        let maxMFN = try h.maxMFN()
        let b = s.bitmaps.take(maxMFN: maxMFN)
        #expect(allZero(b))
        s.bitmaps.give(b)
        s.bitmaps.relax()
        let again = s.bitmaps.take(maxMFN: maxMFN)
        #expect(again === b)
        #expect(allZero(again))
        s.bitmaps.give(again)
        #expect(s.bitmaps.drain() > 0)
        #expect(s.bitmaps.idleBytes == 0)
    }

    @Test func aHostOfAnotherSizeGetsANewBitmap() {
        let pool = MFNBitmapPool()
        let small = pool.take(maxMFN: 1 << 20)
        pool.give(small)
        let big = pool.take(maxMFN: 1 << 22)
        #expect(big !== small)
        #expect(big.covers(maxMFN: 1 << 22))
        pool.give(big)
        // The smaller one was dropped when the size changed.
        #expect(pool.idleBytes == big.footprint)
    }

    @Test func concurrentScansOnOneScannerAgree() async throws {
        let h = host(4)
        for d in 1...6 { try h.createGuest(.linux(domid: DomID(d), name: "g\(d)", memoryMiB: 64)) }
        try h.inject(.duplicateMfn(pfn: 10, sameAs: 2), into: 3)
        let s = P2MScanner(host: h)
        let results = await withTaskGroup(of: (DomID, Set<FindingKind>).self) { g in
            for round in 0..<3 {
                for d in 1...6 { g.addTask { (DomID(d), kinds(s.scan(DomID(d)))) }; _ = round }
            }
            var all: [(DomID, Set<FindingKind>)] = []
            for await r in g { all.append(r) }
            return all
        }
        for (d, k) in results {
            if d == 3 { #expect(k.contains(.duplicateMfn)) } else { #expect(k.isEmpty, "domain \(d): \(k)") }
        }
    }
}

import Foundation
import Testing
import P2MDumpCore
@testable import P2MEngine
@testable import P2MSimulator

/// `check-core --preflight`: what the dump shows predicts the same save failure as the
/// live guest (issue 12's "offline, check-core --preflight of that dump predicts the same").
@Suite("Toolstack prediction from a dump equals the live one for save")
struct OfflinePreflightTests {
    @Test("leaf outside the pseudo-physical map", arguments: [false, true])
    func leafOutsidePhysmap(otherFrame: Bool) throws {
        let h = try OfflineEqualsLiveTests.guest(width: .bits64, formats: .both)
        try h.inject(.leafOutsidePhysmap(leaf: 3, otherFrame: otherFrame), into: 7)
        let (live, offline, _) = try OfflineEqualsLiveTests.roundTrip(h, 7, probe: false)
        let liveSave = try #require(live.toolstack?.prediction(.save))
        let offlineSave = try #require(offline.toolstack?.prediction(.save))
        #expect(liveSave.outcome == .fails)
        #expect(liveSave.messages.first == "Bad mfn in p2m_frame_list[3]", "\(liveSave.messages)")
        #expect(offlineSave.outcome == liveSave.outcome)
        // Same failure at the same index. The detail lines carry what each source knows: a
        // dump has neither Xen's M2P nor the host's max MFN, so offline the frame's m2p is
        // "not a pfn of this dump" and max is the dump's highest frame.
        #expect(offlineSave.messages.first == liveSave.messages.first, "\n live:    \(liveSave.messages)\n offline: \(offlineSave.messages)")
        let frame = try #require(liveSave.messages.dropFirst().first?.split(separator: ",").first)
        #expect(offlineSave.messages.dropFirst().first?.hasPrefix(String(frame) + ", max ") == true, "\(offlineSave.messages)")
        #expect(offline.count(.p2mFrameOutsidePhysmap) == live.count(.p2mFrameOutsidePhysmap))
    }

    @Test func healthyGuestWorksOfflineToo() throws {
        let h = try OfflineEqualsLiveTests.guest(width: .bits64, formats: .both)
        let (_, offline, _) = try OfflineEqualsLiveTests.roundTrip(h, 7, probe: false)
        let t = try #require(offline.toolstack)
        #expect(t.prediction(.save)?.outcome == .works)
        #expect(t.exitStatus == 0)
    }
}

import Foundation
import Logging
import Testing
import XenP2MAPI
@testable import XenP2MDaemon

/// seq strictly increasing across restarts for every event, streamed-only ones included
/// (kill -9 is DaemonEndToEndTests.testKill9AndRestartKeepsIncidentLog).
struct SeqReservationTests {
    let logger = Logger(label: "test")

    func tempDir() throws -> String {
        let dir = NSTemporaryDirectory() + "xenp2m-seq-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A daemon's events as a restart sees them: the log and the reservation of `dir`.
    func hub(_ dir: String, block: UInt64 = 4) throws -> EventHub {
        EventHub(log: try IncidentLog(directory: dir, logger: logger),
                 reservation: try SeqReservation(directory: dir, block: block, logger: logger))
    }

    func balloon(_ h: EventHub) -> UInt64 {
        h.publish(kind: .memoryChanged, domid: 2, name: "b", uuid: nil, severity: nil, message: "ballooned").seq
    }

    @Test func streamedEventsAreNotNumberedAgainAfterARestart() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try hub(dir)
        var seen = (0..<10).map { _ in balloon(first) }
        seen.append(first.publish(kind: .domainNew, domid: 1, name: "a", uuid: nil, severity: .ok, message: "new").seq)
        seen += (0..<3).map { _ in balloon(first) }
        #expect(seen == Array(1...14))
        // Blocks of 4 from 1: the file says 17 once 13 was handed out. Nothing is written
        // at exit, as after kill -9.
        #expect(try String(contentsOfFile: dir + "/seq.reserved", encoding: .utf8) == "17\n")
        let second = try hub(dir)
        #expect(second.lastSeq == 16)
        let next = balloon(second)
        #expect(next == 17, "the incident log alone would give 12")
        #expect(next > seen.max()!)
        // And again: each restart moves past the previous run's numbers.
        let third = try hub(dir)
        #expect(balloon(third) == 21)
    }

    @Test func aStateDirectoryFromBeforeTheReservationContinuesAfterItsLog() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let old = EventHub(log: try IncidentLog(directory: dir, logger: logger))
        for _ in 0..<5 { old.publish(kind: .domainNew, domid: 1, name: "a", uuid: nil, severity: .ok, message: "new") }
        #expect(!FileManager.default.fileExists(atPath: dir + "/seq.reserved"))
        #expect(balloon(try hub(dir)) == 6)
    }

    @Test func aFailedReservationIsReportedAndRetried() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A directory where the temporary file goes: the write fails (as root too).
        try FileManager.default.createDirectory(atPath: dir + "/seq.reserved.tmp", withIntermediateDirectories: false)
        let h = try hub(dir)
        #expect(balloon(h) == 1, "events keep flowing")
        #expect(h.reservationProblem?.contains("may repeat") == true)
        #expect(balloon(h) == 2)
        try FileManager.default.removeItem(atPath: dir + "/seq.reserved.tmp")
        #expect(balloon(h) == 3)
        #expect(h.reservationProblem == nil)
        #expect(try String(contentsOfFile: dir + "/seq.reserved", encoding: .utf8) == "7\n")
    }

    @Test func aDamagedReservationFileIsRefused() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for junk in ["", "seventeen\n", "-3\n", "0\n"] {
            try junk.write(toFile: dir + "/seq.reserved", atomically: true, encoding: .utf8)
            #expect(performing: { try SeqReservation(directory: dir, logger: logger) },
                    throws: { "\($0)".contains("seq.reserved") && "\($0)".contains("not a sequence number") })
        }
    }
}

import Foundation
import P2MConfig
import Testing
@testable import XenP2MDaemon

/// Scans run on their own threads at poll.scan_nice, below the event loop.
@Suite struct ScanThreadTests {
    static func niceOfThisThread() -> Int32 {
        errno = 0
        return getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(currentThreadID() ?? 0))
    }

    @Test func scanThreadRunsAtTheConfiguredNice() async {
        let base = Self.niceOfThisThread()
        let seen = await runScan(nice: 7) { Self.niceOfThisThread() }
        #expect(seen == min(19, base + 7) || seen == 7, "scan thread nice \(String(describing: seen)), caller \(base)")
        // Only the scan thread: the caller keeps its priority.
        #expect(Self.niceOfThisThread() == base)
        let plain = await runScan(nice: 0) { Self.niceOfThisThread() }
        #expect(plain == base)
    }

    @Test func threadIDIsTheKernelsTid() {
        let tid = currentThreadID()
        #expect(tid != nil)
        #expect(FileManager.default.fileExists(atPath: "/proc/self/task/\(tid ?? -1)"))
    }

    @Test func scanNiceIsConfigurableAndBounded() throws {
        #expect(DaemonConfig().scanNice == 10)
        #expect(try DaemonConfig.parse("poll:\n  scan_nice: 0\n", file: "t.yaml").scanNice == 0)
        #expect(throws: ConfigError.self) { try DaemonConfig.parse("poll:\n  scan_nice: 20\n", file: "t.yaml") }
        #expect(throws: ConfigError.self) { try DaemonConfig.parse("poll:\n  scan_nice: -1\n", file: "t.yaml") }
    }
}

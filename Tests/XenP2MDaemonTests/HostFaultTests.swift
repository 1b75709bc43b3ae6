import Foundation
import P2MEngine
import Testing
import XenP2MAPI
#if canImport(Glibc)
import Glibc
#endif

/// Faults of the host and of the machine the daemon runs on, against the real binaries:
/// the host cannot list its domains or map its M2P (scenario `host.faults`), the state
/// file system is full, and the wall clock jumps.
// Nested in DaemonEndToEndTests (not indented, to keep this file's history readable) so
// that its serialization covers these tests too.
extension DaemonEndToEndTests {
@Suite final class HostFaultTests {
    let ctl: String

    init() throws {
        ctl = try Binaries.path("xenp2mctl")
        _ = try Binaries.path("xenp2md")
    }

    func ctl(_ d: DaemonUnderTest, _ args: String...) throws -> RunResult {
        try runTool(ctl, ["--socket", d.socket] + args)
    }

    func daemon(scenario: String, config: String? = nil, pollInterval: Double? = 0.2, env: [String: String] = [:]) throws -> DaemonUnderTest {
        let dir = try makeTempDir()
        var args = ["--scenario", dir + "/fleet.yaml"]
        try scenario.write(toFile: dir + "/fleet.yaml", atomically: true, encoding: .utf8)
        if let config {
            try config.write(toFile: dir + "/xenp2md.yaml", atomically: true, encoding: .utf8)
            args += ["--config", dir + "/xenp2md.yaml"]
        }
        return try DaemonUnderTest(dir: dir, extraArgs: args, pollInterval: pollInterval, env: env)
    }

    // MARK: - Domain listing fails

    /// Listing fails on polls 3..17: the daemon keeps running and polling, keeps every
    /// known domain (no domain_gone), serves the old reports marked stale, says so in
    /// /v1/health (status degraded) and in `xenp2mctl list`/`check`; afterwards it scans
    /// again and the marks go away.
    @Test func testDomainListingFailureKeepsLastKnownStateAndRecovers() throws {
        let d = try daemon(scenario: """
            host:
              memory_gib: 1
              faults:
                - {kind: list_domains_fails, errno: EIO, after_calls: 2, count: 15}
            domains:
              - {domid: 1, name: pv-one, memory_mib: 64}
              - {domid: 2, name: hvm-two, type: hvm, memory_mib: 64}
            """)
        try d.waitPolled()
        #expect(try d.eventually(10) { try d.health().domainListing?.ok == false }, "\(d.log)")

        let h = try d.health()
        #expect(h.status == "degraded")
        #expect(h.domains == 2, "a host that cannot list its domains has not destroyed them")
        let listing = try #require(h.domainListing)
        #expect(listing.consecutiveFailures >= 1)
        #expect(listing.lastError == ("list domains from domid 0 failed: EIO (Input/output error)"))
        #expect(listing.failingSince != nil)
        #expect(listing.lastSuccessAt != nil)
        #expect(h.problems?.count == 1)
        #expect(h.problems?.first?.hasPrefix("cannot list domains since ") == true, "\(h.problems ?? [])")
        #expect(h.problems?.first?.contains("EIO") == true)

        let stale = try d.summaries()
        #expect(stale.map(\.domid) == ([1, 2]))
        #expect(stale.map(\.severity) == ([.ok, .notApplicable]), "the last known verdicts, not errors")
        #expect(stale.allSatisfy { $0.stale?.contains("list domains from domid 0 failed: EIO") == true }, "\(stale.map(\.stale))")
        #expect((try d.client.request("GET", "/v1/domains/1").status) == 200)
        let list = try ctl(d, "list")
        #expect(list.status == 0, "\(list.stderr)")
        #expect(list.stdout.contains("\nSTALE: cannot list domains since "), "\(list.stdout)")
        let check = try ctl(d, "check")
        #expect(check.status == 3, "stale all-clear is UNKNOWN: \(check.stdout)")
        #expect(check.stdout.hasPrefix("P2M UNKNOWN - 2 domains: 0 critical, 0 warning, 0 unknown, 2 ok; stale: cannot list domains"), "\(check.stdout)")
        let metrics = String(decoding: try d.client.request("GET", "/metrics").body, as: UTF8.self)
        #expect(metrics.split(separator: "\n").contains { $0.hasPrefix("xenp2m_domain_listing_failures ") && !$0.hasSuffix(" 0") && !$0.hasSuffix(" 0.0") }, "\(metrics)")

        // The loop keeps running while it fails.
        let polls = h.polls
        #expect(try d.eventually(5) { try d.health().polls >= polls + 2 })

        // Recovery: listing works again, scans resume, the marks go away.
        let scannedBefore = try #require(stale.first?.scannedAt)
        #expect(try d.eventually(15) { try d.health().domainListing?.ok == true }, "\(d.log)")
        #expect(try d.eventually(5) { try d.summaries().first.flatMap(\.scannedAt).map { $0 > scannedBefore } == true })
        let after = try d.health()
        #expect(after.status == "ok")
        #expect(after.problems == [])
        #expect(after.domainListing?.failures == 15)
        #expect(after.domainListing?.consecutiveFailures == 0)
        #expect(after.domainListing?.failingSince == nil)
        #expect(after.domainListing?.lastError == listing.lastError, "the last failure stays on record")
        #expect(try d.summaries().allSatisfy { $0.stale == nil })
        #expect((try ctl(d, "check").status) == 0)

        let events = try d.events()
        #expect(!(events.contains { $0.kind == .domainGone }), "\(events.map(\.message))")
        #expect((events.filter { $0.kind.isIncident }.map(\.kind)) == ([.domainNew, .domainNew]))
        // One error line for the whole outage, one line for the recovery.
        #expect((d.log.components(separatedBy: "cannot list domains; keeping the last known reports").count - 1) == 1, "\(d.log)")
        #expect(d.log.contains("domain listing works again"), "\(d.log)")
        #expect(d.isRunning)
    }

    // MARK: - M2P cannot be mapped

    /// The M2P map fails (scans 2-3) and then comes back short (scans 4-5): every such
    /// scan is an error naming the call, never a finding; the daemon is not degraded (the
    /// host answers), and the domain is ok again once the M2P maps.
    @Test func testM2PMapFailureIsAScanErrorNotFindings() throws {
        let d = try daemon(scenario: """
            host:
              memory_gib: 1
              faults:
                - {kind: m2p_map_fails, errno: EFAULT, after_calls: 1, count: 2}
                - {kind: m2p_map_short, after_calls: 3, count: 2, entries: 16}
            domains:
              - {domid: 1, name: pv-one, memory_mib: 64}
              - {domid: 2, name: hvm-two, type: hvm, memory_mib: 64}
            """, config: "poll:\n  history: 50\n")
        try d.waitPolled()
        // Scan 6 maps the M2P again: error -> ok.
        #expect(try d.eventually(15) {
            try d.events().contains { $0.kind == .severityChanged && $0.domid == 1 && $0.current == "ok" }
        }, "\(d.log)")
        let history = try P2MReport.decoder().decode([P2MReport].self, from: d.client.request("GET", "/v1/domains/1?history=1").body)
        #expect(history.count >= 6)
        let errors = history.compactMap(\.error)
        #expect((errors.filter { $0 == "map the M2P table up to MFN 0x3ffff failed: EFAULT (Bad address)" }.count) == 2, "\(errors)")
        #expect((errors.filter { $0.contains("inconsistent answer from the host: the mapping has 16 entries, not 262144") }.count) == 2, "\(errors)")
        #expect((history.filter { $0.severity == .error }.count) == 4)
        #expect(history.allSatisfy { $0.findings.isEmpty }, "no finding may come from a missing M2P: \(history.map { $0.findings.map(\.kind) })")
        #expect(history.last?.severity == .ok)

        let incidents = try incidentLogEvents(d.stateDir + "/incidents.jsonl").filter { $0.domid == 1 }
        #expect(incidents.map(\.kind) == ([.domainNew, .severityChanged, .severityChanged]))
        #expect(incidents.dropFirst().first?.message == ("domain 1 (pv-one): ok -> error (map the M2P table up to MFN 0x3ffff failed: EFAULT (Bad address))"))
        let h = try d.health()
        #expect(h.status == "ok")
        #expect(h.domains == 2)
        #expect((try d.client.request("GET", "/v1/domains/2").status) == 200)
        #expect(d.isRunning)
    }

    // MARK: - State file system full

    /// A 64 KiB tmpfs, filled: every append fails with ENOSPC. /v1/health says so (status
    /// degraded, incident_log.writable false, the error, the held count); once space is
    /// freed the next poll writes the held incidents, in order, and health is ok again.
    @Test func testFullStateFileSystemIsReportedAndHeldIncidentsAreWrittenLater() throws {
        guard getuid() == 0 else { try Test.cancel("SKIPPED: mounting a 64 KiB tmpfs for the state directory needs root") }
        let dir = try makeTempDir()
        let state = dir + "/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let mount = try runTool("/bin/mount", ["-t", "tmpfs", "-o", "size=64k", "xenp2m-test-full", state])
        guard mount.status == 0 else {
            try? FileManager.default.removeItem(atPath: dir)
            try Test.cancel("SKIPPED: cannot mount a tmpfs at \(state) (\(mount.stderr.trimmingCharacters(in: .whitespacesAndNewlines))); the full-disk case is untested")
        }
        var d: DaemonUnderTest?
        defer {
            if let d, d.isRunning {
                d.signal(SIGKILL)
                _ = d.waitExit(timeout: 10)
            }
            d = nil
            _ = try? runTool("/bin/umount", [state])
            try? FileManager.default.removeItem(atPath: dir)
        }
        _ = FileManager.default.createFile(atPath: state + "/incidents.jsonl", contents: nil)
        let filler = state + "/filler"
        let fd = open(filler, O_WRONLY | O_CREAT, 0o644)
        #expect(fd >= 0)
        let block = [UInt8](repeating: 0x78, count: 4096)
        while write(fd, block, block.count) > 0 {}
        #expect(errno == ENOSPC)
        close(fd)

        let daemon = try DaemonUnderTest(dir: dir)
        daemon.removeOnDeinit = false
        d = daemon
        try daemon.waitPolled()
        let h = try daemon.health()
        #expect(h.status == "degraded")
        let log = try #require(h.incidentLog)
        #expect(!log.writable)
        #expect(log.path == (state + "/incidents.jsonl"))
        #expect(log.lastError?.hasSuffix("No space left on device") == true, "\(log)")
        #expect(log.unpersistedEvents == 6, "one domain_new per demo domain")
        #expect(log.droppedEvents == 0)
        #expect(log.failingSince != nil)
        #expect(h.incidents == 6, "still served from memory")
        #expect(h.problems?.first == "incident log not writable (\(log.lastError!)): 6 incidents held in memory only")
        // The block of event numbers could not be reserved either (seq.reserved).
        #expect(h.problems?.count == 2 && h.problems?.last?.hasPrefix("event numbers not reserved") == true, "\(h.problems ?? [])")
        #expect((try String(contentsOfFile: state + "/incidents.jsonl", encoding: .utf8)) == "", "no torn record left behind")
        #expect(daemon.log.contains("incident log: write failed"), "\(daemon.log)")
        let metrics = String(decoding: try daemon.client.request("GET", "/metrics").body, as: UTF8.self)
        #expect(metrics.contains("xenp2m_incident_log_unpersisted_events 6"), "\(metrics)")

        // Space again: the next poll writes what was held.
        try FileManager.default.removeItem(atPath: filler)
        #expect(try daemon.eventually(10) { try daemon.health().incidentLog?.writable == true }, "\(daemon.log)")
        let ok = try daemon.health()
        #expect(ok.status == "ok")
        #expect(ok.problems == [])
        #expect(ok.incidentLog?.unpersistedEvents == 0)
        #expect((ok.incidentLog?.writeFailures ?? 0) >= 6, "each append failed, then each poll's retry")
        let written = try incidentLogEvents(state + "/incidents.jsonl")
        #expect(written.map(\.seq) == Array(1...6))
        #expect(written == (try daemon.events().filter { $0.kind.isIncident }))
        #expect(daemon.log.contains("incident log: writable again; held events written"), "\(daemon.log)")
        #expect(daemon.isRunning)
    }

    // MARK: - Wall clock jumps

    /// Debian's libfaketime (package faketime): /usr/lib/<multiarch triple>/faketime/.
    static let libfaketime: String? = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib")) ?? []).sorted()
        .map { "/usr/lib/\($0)/faketime/libfaketime.so.1" }
        .first { FileManager.default.fileExists(atPath: $0) }

    /// libfaketime 0.9.10 (Debian 12) rewrites every absolute timerfd_settime by the fake
    /// offset, also on CLOCK_MONOTONIC/CLOCK_BOOTTIME timers and with
    /// FAKETIME_DONT_FAKE_MONOTONIC=1, while clock_gettime on those clocks stays real. The
    /// Swift runtime's timers (Task.sleep, through Dispatch) and NIO's are such timers, so
    /// under plain libfaketime a wall clock set back by 2 h delays every sleep by 2 h and a
    /// jump forward makes Dispatch spin; a real settimeofday moves neither clock. Preloaded
    /// ahead of libfaketime, this passes timerfd_settime of non-wall-clock timers straight
    /// to the kernel, so only what a real jump changes (the wall clock) is faked.
    static let timerfdShim = #"""
        #define _GNU_SOURCE
        #include <dlfcn.h>
        #include <sys/syscall.h>
        #include <sys/timerfd.h>
        #include <time.h>
        #include <unistd.h>

        static unsigned char monotonic[4096];

        int timerfd_create(int clockid, int flags) {
            int (*next)(int, int) = (int (*)(int, int))dlsym(RTLD_NEXT, "timerfd_create");
            int fd = next ? next(clockid, flags) : (int)syscall(SYS_timerfd_create, clockid, flags);
            if (fd >= 0 && fd < 4096) monotonic[fd] = clockid != CLOCK_REALTIME && clockid != CLOCK_REALTIME_ALARM;
            return fd;
        }

        int timerfd_settime(int fd, int flags, const struct itimerspec *v, struct itimerspec *old) {
            if (fd >= 0 && fd < 4096 && monotonic[fd]) return (int)syscall(SYS_timerfd_settime, fd, flags, v, old);
            int (*next)(int, int, const struct itimerspec *, struct itimerspec *) =
                (int (*)(int, int, const struct itimerspec *, struct itimerspec *))dlsym(RTLD_NEXT, "timerfd_settime");
            return next(fd, flags, v, old);
        }
        """#

    /// Runs the daemon under libfaketime and moves its wall clock: +0, then +1 h, then
    /// -2 h (3 h back). Polls go on at the configured interval in every phase (no stall
    /// after the jump back, no burst after the jump forward), /v1/health answers and its
    /// last_poll_at follows the wall clock, event times follow the wall clock while their
    /// seq only grows, and the incident log stays readable, in seq order, across a restart.
    @Test func testWallClockJumpsDoNotDisturbPolling() throws {
        guard let libfaketime = Self.libfaketime else {
            try Test.cancel("SKIPPED: no /usr/lib/*/faketime/libfaketime.so.1 (apt-get install faketime; scripts/setup.sh installs it); clock jumps are untested")
        }
        guard let cc = ["/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/clang", "/opt/swift/usr/bin/clang"]
            .first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            try Test.cancel("SKIPPED: no C compiler for the timerfd shim libfaketime needs here; clock jumps are untested")
        }
        // TSan and libfaketime both interpose clock_gettime; together the daemon never
        // gets through start-up ("Unexpected recursive calls to clock_gettime").
        if let daemon = try? Binaries.path("xenp2md"), let image = FileManager.default.contents(atPath: daemon),
           image.range(of: Data("__tsan_init".utf8)) != nil {
            try Test.cancel("SKIPPED: xenp2md is built with ThreadSanitizer, which cannot run under libfaketime; clock jumps are untested in this build")
        }
        let dir = try makeTempDir()
        try Self.timerfdShim.write(toFile: dir + "/timerfd-shim.c", atomically: true, encoding: .utf8)
        let built = try runTool(cc, ["-shared", "-fPIC", "-O2", "-o", dir + "/timerfd-shim.so", dir + "/timerfd-shim.c", "-ldl"])
        guard built.status == 0 else {
            try? FileManager.default.removeItem(atPath: dir)
            throw HarnessError("\(cc) cannot build the timerfd shim: \(built.stderr)")
        }
        let clockFile = dir + "/faketime"
        func setClock(_ offset: String) throws { try (offset + "\n").write(toFile: clockFile, atomically: true, encoding: .utf8) }
        try setClock("+0")
        try """
            host:
              memory_gib: 1
              faults:
                - {kind: m2p_map_fails, after_calls: 8, count: 8}
            domains:
              - domid: 1
                name: balloon
                memory_mib: 64
                maxmem_mib: 128
                balloon: {min_mib: 32, max_mib: 128, step_mib: 16}
            """.write(toFile: dir + "/fleet.yaml", atomically: true, encoding: .utf8)
        try "poll:\n  interval_seconds: 0.3\n  jitter_seconds: 0\n".write(toFile: dir + "/xenp2md.yaml", atomically: true, encoding: .utf8)
        let interval = 0.3
        let realStart = Date()
        // Started through a shell under the same preload: libfaketime's constructor adds
        // FAKETIME_SHARED to the environment of the first process it is loaded into, which
        // moves `environ` off the stack, and the Swift runtime then finds no arguments at
        // all (CommandLine.arguments == []: the daemon would ignore --backend sim). In the
        // exec'd daemon the variable already exists, so environ stays where it was.
        let d = try DaemonUnderTest(dir: dir, extraArgs: ["--scenario", dir + "/fleet.yaml", "--config", dir + "/xenp2md.yaml"],
                                    pollInterval: nil, env: [
                                        "LD_PRELOAD": dir + "/timerfd-shim.so:" + libfaketime,
                                        "FAKETIME_TIMESTAMP_FILE": clockFile,
                                        "FAKETIME_NO_CACHE": "1",
                                        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                                    ], launcher: ["/bin/sh", "-c", "exec \"$@\"", "sh"])
        d.removeOnDeinit = false
        defer {
            if d.isRunning {
                d.signal(SIGKILL)
                _ = d.waitExit(timeout: 10)
            }
            // libfaketime's shared clock state, named after the first process (the shell,
            // whose pid the daemon kept across exec).
            unlink("/dev/shm/faketime_shm_\(d.pid)")
            unlink("/dev/shm/sem.faketime_sem_\(d.pid)")
            try? FileManager.default.removeItem(atPath: dir)
        }
        try d.waitPolled()

        /// Runs polls up to `target` and checks their pace against the configured interval.
        func phase(_ name: String, offset: Double, until target: UInt64) throws {
            let h0 = try d.health()
            let t0 = ContinuousClock.now
            let reached = try d.eventually(20) { try d.health().polls >= target }
            let polls = try d.health().polls
            #expect(reached, "\(name): polling stalled at \(polls) polls:\n\(d.log)")
            let h1 = try d.health()
            let elapsed = Double((ContinuousClock.now - t0).components.seconds) + Double((ContinuousClock.now - t0).components.attoseconds) / 1e18
            let done = Double(h1.polls - h0.polls)
            print("clock jumps, \(name): \(Int(done)) polls in \(String(format: "%.2f", elapsed)) s (interval \(interval) s), last_poll_at \(h1.lastPollAt.map { "\($0)" } ?? "-")")
            #expect(done <= (elapsed / interval + 3), "\(name): \(done) polls in \(elapsed) s is a burst")
            #expect(done >= (elapsed / (interval * 3) - 1), "\(name): \(done) polls in \(elapsed) s is a stall")
            let lag = try #require(h1.lastPollAt).timeIntervalSince(Date()) - offset
            #expect(abs(lag) < 5, "\(name): last_poll_at \(h1.lastPollAt!) does not follow the wall clock (offset \(offset) s)")
        }
        // Scans 9..16 cannot map the M2P: ok -> error at poll 9 (after the jump forward),
        // error -> ok at poll 17 (after the jump back), so incidents land in both phases.
        try phase("before the jumps", offset: 0, until: 4)
        try setClock("+3600")
        try phase("wall clock 1 h ahead", offset: 3600, until: 12)
        try setClock("-7200")
        try phase("wall clock 2 h behind", offset: -7200, until: 20)
        let realEnd = Date()

        // Every event's time is the wall clock of its phase; phases follow seq order.
        let events = try d.events()
        #expect(events.map(\.seq) == Array(1...UInt64(events.count)), "seq is gapless and increasing")
        let offsets: [Double] = [0, 3600, -7200]
        func phaseOf(_ e: DaemonEvent) -> Int? {
            offsets.firstIndex { o in
                let t = e.time.timeIntervalSince1970 - o
                return t >= realStart.timeIntervalSince1970 - 2 && t <= realEnd.timeIntervalSince1970 + 2
            }
        }
        let phases = events.map(phaseOf)
        #expect(!phases.contains(nil), "event times outside every phase: \(events.map { "\($0.seq) \($0.time)" })")
        #expect((phases.compactMap { $0 }) == (phases.compactMap { $0 }.sorted()), "event times jump between phases out of seq order")
        #expect((Set(phases.compactMap { $0 })) == ([0, 1, 2]), "events in every phase (memory_changed each poll)")

        let incidents = try incidentLogEvents(d.stateDir + "/incidents.jsonl")
        #expect(incidents.map(\.kind) == ([.domainNew, .severityChanged, .severityChanged]))
        #expect(incidents.map(\.current) == (["ok", "error", "ok"]))
        #expect(incidents.map(phaseOf) == ([0, 1, 2]))
        #expect(incidents.map(\.seq) == incidents.map(\.seq).sorted())
        #expect(incidents == (events.filter { $0.kind.isIncident }))
        guard incidents.count == 3 else { return }
        #expect(incidents[2].time < incidents[0].time, "the wall clock went back: a later incident has an earlier time")

        // The log loads in a daemon with a sane clock, and numbering continues after it.
        d.signal(SIGTERM)
        #expect((d.waitExit(timeout: 15)) == 0, "\(d.log)")
        let next = try DaemonUnderTest(dir: dir, extraArgs: ["--scenario", dir + "/fleet.yaml"])
        next.removeOnDeinit = false
        try next.waitPolled()
        #expect(next.log.contains("incidents_loaded=3 "), "\(next.log)")
        #expect(!(next.log.contains("skipped unreadable lines")), "\(next.log)")
        let replay = try next.events().filter { $0.kind.isIncident }
        #expect(Array(replay.prefix(3)) == incidents)
        #expect(replay.dropFirst(3).allSatisfy { $0.seq > incidents[2].seq })
        next.signal(SIGTERM)
        #expect((next.waitExit(timeout: 15)) == 0)
    }
}
}

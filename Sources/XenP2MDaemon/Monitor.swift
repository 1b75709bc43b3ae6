import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import P2MEngine
import XenP2MAPI

/// Why an API request could not be answered.
enum MonitorError: Error {
    case notFound(DomID)
    case timeout(DomID, Double)
    case shuttingDown
}

/// The daemon's state: every known domain with its latest report and a short history,
/// the poll loop's bookkeeping, and the rules that turn report changes into events.
/// Scans themselves run off the actor (they block on the host), so API reads never wait
/// for a scan.
public actor Monitor {
    struct Record {
        var info: DomainInfo
        var latest: P2MReport?
        var history: [P2MReport] = []
        /// Why it is not scanned (dying, shut down), or nil.
        var stopping: String?
        var announced = false
        /// Frames the last scan mapped: the budget's estimate for the next one.
        var lastFrames: UInt64?
        /// The latest report that is not a scan error: a failed scan (M2P not mappable,
        /// frames refusing to map) knows nothing of the P2M's format, stability or size,
        /// so those changes are judged between successful scans only.
        var lastScanned: P2MReport?
    }

    let host: any P2MHost
    let tick: (@Sendable () throws -> [DomID])?
    let hub: EventHub
    let metrics: DaemonMetrics
    let logger: Logger
    private(set) var config: DaemonConfig
    private var scanner: P2MScanner
    private let budget: ScanBudget
    private var records: [DomID: Record] = [:] {
        didSet { summariesBody.withLockedValue { $0 = nil } }
    }
    /// GET /v1/domains as encoded JSON, kept until a record changes: monitoring
    /// clients poll it far more often than scans change it, and encoding hundreds of
    /// summaries per request is what bounded throughput under load. Readable without
    /// entering the actor, which is busy recording results while a poll runs.
    /// A ByteBuffer, so every answer shares its storage instead of copying ~100 KB.
    nonisolated let summariesBody = NIOLockedValueBox<ByteBuffer?>(nil)
    private var manualScans: [DomID: Task<P2MReport?, Never>] = [:]
    private let startedAt = ContinuousClock.now
    private(set) var polls: UInt64 = 0
    private var lastPollAt: Date?
    /// The host's domain list: while it cannot be read, the records are the last known
    /// state (kept, not declared gone) and are served marked stale.
    private var listing = DomainListingHealth(ok: true, consecutiveFailures: 0, failures: 0, lastError: nil,
                                              failingSince: nil, lastSuccessAt: nil) {
        didSet { summariesBody.withLockedValue { $0 = nil } }
    }
    private var lastPollDuration: Double?
    /// Set while a poll runs and refreshed on each finished scan; the watchdog stops
    /// pinging when it gets old (a hung host call), and systemd restarts the service.
    private(set) var busySince: ContinuousClock.Instant?
    var configFile: String?
    var configGeneration = 1
    var configError: String?
    private var readyContinuations: [CheckedContinuation<Void, Never>] = []

    init(host: any P2MHost, tick: (@Sendable () throws -> [DomID])?, config: DaemonConfig, hub: EventHub,
         metrics: DaemonMetrics, logger: Logger) {
        self.host = host
        self.tick = tick
        self.config = config
        self.hub = hub
        self.metrics = metrics
        self.logger = logger
        scanner = P2MScanner(host: host, options: Self.scanOptions(config))
        budget = ScanBudget(framesPerSecond: config.scanBudgetFramesPerSecond)
        metrics.incidents.set(to: Double(hub.incidentCount))
    }

    static func scanOptions(_ c: DaemonConfig) -> ScanOptions {
        var o = ScanOptions()
        o.probeDataFrames = c.probeDataFrames
        o.sampleLimit = c.sampleLimit
        o.batchFrames = c.batchFrames
        return o
    }

    // MARK: - Configuration

    func apply(config new: DaemonConfig, file: String?) async {
        config = new
        configFile = file
        configGeneration += 1
        configError = nil
        scanner = P2MScanner(host: host, options: Self.scanOptions(new))
        await budget.setRate(new.scanBudgetFramesPerSecond)
    }

    func refuseReload(_ why: String) { configError = why }

    // MARK: - Polling

    /// One cycle: let the simulator move, discover domains, scan the live ones within
    /// the concurrency limit and the frame budget, and publish what changed.
    public func poll() async {
        let clock = ContinuousClock()
        let start = clock.now
        busySince = start
        defer { busySince = nil }
        if let tick {
            // Ballooning a simulated guest takes real time; off the actor, so API calls
            // are not held up behind it.
            let failure = await runBlocking { () -> String? in
                do { _ = try tick(); return nil } catch { return "\(error)" }
            }
            if let f = failure, let f {
                logger.warning("simulated fleet could not balloon", metadata: ["error": "\(f)"])
            }
        }
        // Incidents held in memory after a failed append get another chance each poll.
        hub.log?.retry()
        let host = self.host
        let listed = await runBlocking { () -> Result<[DomainInfo], HostError> in
            do throws(HostError) { return .success(try host.listDomains()) } catch { return .failure(error) }
        }
        guard case .success(let infos)? = listed else {
            // Cancelled (shutdown): not a failure of the host.
            guard case .failure(let e)? = listed else { return }
            listingFailed(e)
            finishPoll(clock: clock, start: start)
            return
        }
        listingWorked()
        let seen = Set(infos.map(\.domid))
        for (domid, rec) in records where !seen.contains(domid) {
            gone(domid, rec, why: "destroyed")
        }
        var due: [(DomID, String, UInt64)] = []
        // Xen refuses foreign mappings of the calling domain, so dom0's own P2M cannot be
        // read through the privcmd interface: leave it out rather than report a failure.
        for info in infos where !(info.domid == 0 && host.backendName == "xen") {
            if let rec = records[info.domid], rec.info.uuid != info.uuid {
                let old = rec.latest?.uuid ?? rec.info.uuidString
                records[info.domid] = nil
                metrics.remove(info.domid)
                hub.publish(kind: .domainReused, domid: info.domid, name: rec.latest?.name, uuid: info.uuidString,
                            severity: nil, previous: old, current: info.uuidString,
                            message: "domid \(info.domid) reused: guest \(old) is gone, \(info.uuidString) took its id")
            }
            var rec = records[info.domid] ?? Record(info: info)
            rec.info = info
            if info.dying || info.shutdown {
                let why = info.dying ? "dying" : "shut down"
                if rec.stopping == nil {
                    rec.stopping = why
                    hub.publish(kind: .domainStopping, domid: info.domid, name: rec.latest?.name ?? host.domainName(info.domid),
                                uuid: info.uuidString, severity: rec.latest?.severity, current: why,
                                message: "domain \(info.domid) is \(why): no longer scanned")
                }
                records[info.domid] = rec
                continue
            }
            rec.stopping = nil
            records[info.domid] = rec
            let fpp: UInt64 = 512
            due.append((info.domid, info.uuidString, rec.lastFrames ?? (info.maxPages / fpp + 8)))
        }
        metrics.domains.set(to: Double(records.count))

        let scanner = self.scanner
        let budget = self.budget
        let limit = max(1, config.concurrentScans)
        let nice = Int32(config.scanNice)
        await withTaskGroup(of: Void.self) { group in
            var next = due.makeIterator()
            var running = 0
            while let (domid, uuid, estimate) = next.next() {
                if Task.isCancelled { break }
                if running == limit {
                    await group.next()
                    running -= 1
                }
                running += 1
                group.addTask {
                    let waited = await budget.reserve(frames: Double(estimate))
                    if waited > 0 { await self.noteThrottled(waited) }
                    guard !Task.isCancelled, let r = await runScan(nice: nice, { scanner.scan(domid) }) else { return }
                    await budget.settle(estimated: Double(estimate), actual: Double(r.stats.framesMapped))
                    let vanished = r.severity == .error ? !(await self.exists(domid)) : false
                    await self.record(r, uuid: uuid, vanished: vanished)
                }
            }
            await group.waitForAll()
        }
        // The duplicate bitmaps are sized by host memory (64 MiB per concurrent scan on a
        // 2 TiB host). Kept for the next cycle, which then takes no page faults for them,
        // but reclaimable by the kernel meanwhile if dom0 runs short of memory.
        scanner.bitmaps.relax()
        finishPoll(clock: clock, start: start)
    }

    /// A poll cycle ran (also one whose listing failed: the loop is alive, and the failure
    /// is reported in `health()` rather than by a poll counter that stops).
    private func finishPoll(clock: ContinuousClock, start: ContinuousClock.Instant) {
        metrics.incidentLogUnpersisted.set(to: Double(hub.log?.status().unpersistedEvents ?? 0))
        polls += 1
        lastPollAt = Date()
        let d = clock.now - start
        lastPollDuration = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        metrics.pollCycle.recordNanoseconds(Int64(lastPollDuration! * 1e9))
        if polls == 1 {
            metrics.up.set(to: 1)
            for c in readyContinuations { c.resume() }
            readyContinuations = []
        }
    }

    /// Listing failed: keep every record as it was (a host that cannot answer has not
    /// destroyed its guests), say so once in the log, and report it until it works again.
    private func listingFailed(_ e: HostError) {
        let text = "\(e)"
        var l = listing
        if l.ok || l.lastError != text {
            logger.error("cannot list domains; keeping the last known reports until it works again", metadata: [
                "error": "\(text)", "domains_kept": "\(records.count)",
            ])
        }
        if l.ok { l.failingSince = Date() }
        l.ok = false
        l.consecutiveFailures &+= 1
        l.failures &+= 1
        l.lastError = text
        listing = l
        metrics.scanErrors.increment()
        metrics.listingFailures.set(to: Double(l.consecutiveFailures))
    }

    private func listingWorked() {
        if !listing.ok {
            logger.notice("domain listing works again", metadata: [
                "failed_polls": "\(listing.consecutiveFailures)", "last_error": "\(listing.lastError ?? "")",
            ])
            metrics.listingFailures.set(to: 0)
        }
        var l = listing
        l.ok = true
        l.consecutiveFailures = 0
        l.failingSince = nil
        l.lastSuccessAt = Date()
        listing = l
    }

    /// "cannot list domains since T (N polls): error", or nil while listing works.
    private var listingProblem: String? {
        guard !listing.ok else { return nil }
        let since = listing.failingSince.map { " since " + ISO8601DateFormatter().string(from: $0) } ?? ""
        let n = listing.consecutiveFailures
        return "cannot list domains\(since) (\(n) poll\(n == 1 ? "" : "s")): \(listing.lastError ?? "unknown error")"
    }

    /// Returns once the first poll has completed.
    func waitUntilReady() async {
        if polls > 0 { return }
        await withCheckedContinuation { readyContinuations.append($0) }
    }

    private func noteThrottled(_ seconds: Double) {
        metrics.throttledScans.increment()
        metrics.throttledSeconds.increment(by: seconds)
    }

    nonisolated func exists(_ domid: DomID) async -> Bool {
        let host = self.host
        return await runBlocking { () -> Bool in
            do throws(HostError) {
                _ = try host.domainInfo(domid)
                return true
            } catch {
                return !error.isDomainGone
            }
        } ?? true
    }

    private func gone(_ domid: DomID, _ rec: Record, why: String) {
        records[domid] = nil
        metrics.remove(domid)
        metrics.domains.set(to: Double(records.count))
        hub.publish(kind: .domainGone, domid: domid, name: rec.latest?.name, uuid: rec.info.uuidString,
                    severity: rec.latest?.severity, previous: rec.latest?.severity.rawValue,
                    message: "domain \(domid)\(rec.latest?.name.map { " (\($0))" } ?? "") \(why)")
        metrics.incidents.set(to: Double(hub.incidentCount))
    }

    /// Stores a finished scan and publishes what changed since the previous one.
    func record(_ r: P2MReport, uuid: String, vanished: Bool) {
        guard var rec = records[r.domid], rec.info.uuidString == uuid else { return }
        if vanished {
            gone(r.domid, rec, why: "vanished during a scan")
            return
        }
        busySince = busySince.map { _ in .now }
        metrics.scans.increment()
        if r.severity == .error { metrics.scanErrors.increment() }
        let label = r.name.map { "\(r.domid) (\($0))" } ?? "\(r.domid)"
        if let last = rec.latest {
            if last.severity != r.severity {
                hub.publish(kind: .severityChanged, domid: r.domid, name: r.name, uuid: r.uuid, severity: r.severity,
                            previous: last.severity.rawValue, current: r.severity.rawValue,
                            message: "domain \(label): \(last.severity.rawValue) -> \(r.severity.rawValue)" + Self.why(r))
            }
        }
        if r.severity != .error, let prev = rec.lastScanned {
            if prev.primaryFormat != r.primaryFormat {
                hub.publish(kind: .formatChanged, domid: r.domid, name: r.name, uuid: r.uuid, severity: r.severity,
                            previous: prev.primaryFormat?.rawValue ?? "none", current: r.primaryFormat?.rawValue ?? "none",
                            message: "domain \(label): P2M format \(prev.primaryFormat?.rawValue ?? "none") -> \(r.primaryFormat?.rawValue ?? "none")")
            }
            let wasUnstable = prev.count(.p2mUnstable) > 0
            let isUnstable = r.count(.p2mUnstable) > 0
            if wasUnstable != isUnstable {
                hub.publish(kind: isUnstable ? .becameUnstable : .becameStable, domid: r.domid, name: r.name, uuid: r.uuid,
                            severity: r.severity, message: isUnstable
                                ? "domain \(label): P2M kept changing during every retry of the walk"
                                : "domain \(label): P2M stable again")
            }
            if prev.populated != r.populated {
                hub.publish(kind: .memoryChanged, domid: r.domid, name: r.name, uuid: r.uuid, severity: r.severity,
                            previous: "\(prev.populated)", current: "\(r.populated)",
                            message: "domain \(label): populated pages \(prev.populated) -> \(r.populated)")
            }
        }
        if rec.latest == nil && !rec.announced {
            rec.announced = true
            hub.publish(kind: .domainNew, domid: r.domid, name: r.name, uuid: r.uuid, severity: r.severity,
                        current: r.severity.rawValue,
                        message: "domain \(label) found: \(r.severity.rawValue)" + Self.why(r))
        }
        rec.latest = r
        if r.severity != .error { rec.lastScanned = r }
        rec.lastFrames = r.stats.framesMapped
        rec.history.append(r)
        if rec.history.count > config.historyLength { rec.history.removeFirst(rec.history.count - config.historyLength) }
        records[r.domid] = rec
        metrics.update(r)
        metrics.incidents.set(to: Double(hub.incidentCount))
    }

    static func why(_ r: P2MReport) -> String {
        if let e = r.error { return " (\(e))" }
        let kinds = r.findings.map(\.kind.rawValue)
        return kinds.isEmpty ? "" : " (\(kinds.joined(separator: ", ")))"
    }

    // MARK: - Queries

    func summariesJSON() throws -> ByteBuffer {
        if let b = summariesBody.withLockedValue({ $0 }) { return b }
        var data = try APIJSON.encoder(pretty: true).encode(summaries())
        data.append(10)
        let body = ByteBuffer(bytes: data)
        // Records change only on this actor, so nothing can have invalidated it meanwhile.
        summariesBody.withLockedValue { $0 = body }
        return body
    }

    func summaries() -> [DomainSummary] {
        let stale = listingProblem.map { $0 + "; this is the last known report" }
        return records.keys.sorted().compactMap { d in
            let rec = records[d]!
            let state: DomainState = rec.info.dying ? .dying : rec.info.shutdown ? .shutdown : rec.info.paused ? .paused : .running
            guard let r = rec.latest else { return nil }
            return DomainSummary(report: r, state: state, skipped: rec.stopping, stale: stale)
        }
    }

    func report(_ domid: DomID) throws(MonitorError) -> P2MReport {
        guard let r = records[domid]?.latest else { throw .notFound(domid) }
        return r
    }

    func history(_ domid: DomID) throws(MonitorError) -> [P2MReport] {
        guard let rec = records[domid] else { throw .notFound(domid) }
        return rec.history
    }

    /// Scans now and answers with the report, or times out (the scan still completes and
    /// is recorded). Concurrent requests for one domain share one scan. A cancelled caller
    /// (graceful shutdown cancels the API's connection tasks) stops waiting at once and
    /// gets `.shuttingDown`; the scan itself runs on in the background.
    func scanNow(_ domid: DomID, timeout: Double) async throws(MonitorError) -> P2MReport {
        if Task.isCancelled { throw .shuttingDown }
        let info: DomainInfo
        if let rec = records[domid] {
            info = rec.info
        } else {
            let host = self.host
            let found = await runBlocking { () -> DomainInfo? in
                do throws(HostError) { return try host.domainInfo(domid) } catch { return nil }
            }
            if Task.isCancelled { throw .shuttingDown }
            guard let f = found ?? nil else { throw .notFound(domid) }
            info = f
            records[domid] = Record(info: f)
        }
        let task: Task<P2MReport?, Never>
        if let t = manualScans[domid] {
            task = t
        } else {
            let scanner = self.scanner
            let uuid = info.uuidString
            let nice = Int32(config.scanNice)
            task = Task {
                guard let r = await runScan(nice: nice, { scanner.scan(domid) }) else { return nil }
                let vanished = r.severity == .error ? !(await self.exists(domid)) : false
                self.record(r, uuid: uuid, vanished: vanished)
                self.manualDone(domid)
                return vanished ? nil : r
            }
            manualScans[domid] = task
        }
        enum Outcome: Sendable {
            case done(P2MReport?)
            case timedOut
            case cancelled
        }
        let outcome = await withTaskGroup(of: Outcome.self) { group -> Outcome in
            // Not `await task.value` directly: that ignores cancellation, and the group
            // would wait for the whole scan before it could return.
            group.addTask { await valueUnlessCancelled(task).map(Outcome.done) ?? .cancelled }
            group.addTask {
                do {
                    try await Task.sleep(for: .seconds(timeout))
                    return .timedOut
                } catch {
                    return .cancelled
                }
            }
            let first = await group.next() ?? .cancelled
            group.cancelAll()
            return first
        }
        if Task.isCancelled { throw .shuttingDown }
        switch outcome {
        case .done(let r?): return r
        case .done(nil): throw .notFound(domid)
        case .timedOut: throw .timeout(domid, timeout)
        case .cancelled: throw .shuttingDown
        }
    }

    private func manualDone(_ domid: DomID) { manualScans[domid] = nil }

    func health() -> HealthStatus {
        let up = ContinuousClock.now - startedAt
        let reports = records.values.compactMap(\.latest)
        let log = hub.log?.status()
        var problems: [String] = []
        if let why = listingProblem { problems.append(why + "; the last known reports are kept and served as stale") }
        if let log, !log.writable {
            problems.append("incident log not writable (\(log.lastError ?? "unknown error")): \(log.unpersistedEvents) incidents held in memory only"
                + (log.droppedEvents > 0 ? ", \(log.droppedEvents) dropped" : ""))
        }
        return HealthStatus(
            status: polls == 0 ? "starting" : problems.isEmpty ? "ok" : "degraded", pid: getpid(), backend: host.backendName,
            uptimeSeconds: Double(up.components.seconds) + Double(up.components.attoseconds) / 1e18,
            polls: polls, lastPollAt: lastPollAt, lastPollDurationMs: lastPollDuration.map { $0 * 1000 },
            domains: records.count, worstSeverity: reports.map(\.severity).max(), incidents: hub.incidentCount,
            lastEventSeq: hub.lastSeq, configFile: configFile, configGeneration: configGeneration,
            pollIntervalSeconds: config.pollIntervalSeconds, concurrentScans: config.concurrentScans,
            scanBudgetFramesPerSecond: config.scanBudgetFramesPerSecond, configError: configError,
            problems: problems, domainListing: listing, incidentLog: log)
    }

    /// One line for systemd's STATUS=.
    func statusLine() -> String {
        let reports = records.values.compactMap(\.latest)
        let worst = reports.max { $0.severity < $1.severity }
        var s = "\(records.count) domains"
        if let w = worst {
            s += ", worst \(w.severity.rawValue)"
            if w.severity > .ok { s += " (domain \(w.domid)\(w.name.map { " \($0)" } ?? ""))" }
        }
        s += ", \(polls) polls"
        if let d = lastPollDuration { s += ", last took \(String(format: "%.2f", d))s" }
        if !listing.ok { s += "; DEGRADED: cannot list domains (\(listing.lastError ?? "?"))" }
        if let log = hub.log?.status(), !log.writable { s += "; DEGRADED: incident log not writable, \(log.unpersistedEvents) held" }
        return s
    }
}

/// Starts `work`, which delivers its value through `resume`, and waits for it; nil as
/// soon as the calling task is cancelled (the work itself runs on in the background: host
/// calls cannot be interrupted), so shutdown is never held up by a scan.
private func awaitUnlessCancelled<T: Sendable>(_ work: @escaping @Sendable (_ resume: @escaping @Sendable (T) -> Void) -> Void) async -> T? {
    let once = ResumeOnce<T>()
    return await withTaskCancellationHandler {
        await withCheckedContinuation { (c: CheckedContinuation<T?, Never>) in
            once.set(c)
            work { once.resume($0) }
        }
    } onCancel: {
        once.resume(nil)
    }
}

/// Runs blocking host work on a global queue so it never holds a cooperative thread.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T? {
    await awaitUnlessCancelled { resume in DispatchQueue.global(qos: .utility).async { resume(body()) } }
}

/// Waits for `task`'s value (an unstructured task is not cancelled with its waiters).
func valueUnlessCancelled<T: Sendable>(_ task: Task<T, Never>) async -> T? {
    await awaitUnlessCancelled { resume in Task { resume(await task.value) } }
}

/// Runs a scan on a thread of its own at a lower CPU priority, so that under contention
/// the event loop answering the socket (and the rest of dom0) runs first. On Linux nice
/// is a per-thread attribute, so only this thread is affected.
func runScan<T: Sendable>(nice: Int32, _ body: @escaping @Sendable () -> T) async -> T? {
    await awaitUnlessCancelled { resume in
        Thread {
            // Foundation's Thread.name does not reach the kernel here, and glibc's
            // pthread_setname_np is not visible to Swift; ps, top and perf show comm.
            try? "xenp2m-scan".write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
            if nice > 0, let tid = currentThreadID() {
                _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), nice)
            }
            resume(body())
        }.start()
    }
}

/// The kernel's id of the calling thread. Glibc's gettid() is not visible to Swift here,
/// and /proc/thread-self links to "<pid>/task/<tid>".
func currentThreadID() -> Int32? {
    var buf = [CChar](repeating: 0, count: 64)
    let n = readlink("/proc/thread-self", &buf, buf.count - 1)
    guard n > 0 else { return nil }
    let link = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return link.split(separator: "/").last.flatMap { Int32($0) }
}

private final class ResumeOnce<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<T?, Never>?
    private var early: T??

    func set(_ c: CheckedContinuation<T?, Never>) {
        lock.lock()
        if let e = early {
            lock.unlock()
            c.resume(returning: e)
            return
        }
        continuation = c
        lock.unlock()
    }

    func resume(_ value: T?) {
        lock.lock()
        if let c = continuation {
            continuation = nil
            early = .some(nil) // later resumes are ignored
            lock.unlock()
            c.resume(returning: value)
            return
        }
        if early == nil { early = .some(value) }
        lock.unlock()
    }
}

/// A token bucket over mapped frames: scans reserve their estimated frames up front (so
/// concurrent scans share the rate fairly) and settle the difference afterwards. One
/// second of budget may be spent in a burst.
actor ScanBudget {
    private var rate: Double
    private var tokens: Double
    private var last = ContinuousClock.now

    init(framesPerSecond: Double) {
        rate = framesPerSecond
        tokens = framesPerSecond
    }

    func setRate(_ r: Double) {
        refill()
        rate = r
        tokens = min(tokens, r)
    }

    private func refill() {
        let now = ContinuousClock.now
        let d = now - last
        last = now
        guard rate > 0 else { return }
        tokens = min(rate, tokens + rate * (Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18))
    }

    /// Takes `frames` from the bucket and sleeps off any deficit. Returns seconds waited.
    func reserve(frames: Double) async -> Double {
        guard rate > 0 else { return 0 }
        refill()
        let want = min(frames, rate)
        tokens -= want
        guard tokens < 0 else { return 0 }
        let wait = -tokens / rate
        try? await Task.sleep(for: .seconds(wait))
        return wait
    }

    func settle(estimated: Double, actual: Double) {
        guard rate > 0 else { return }
        refill()
        tokens -= max(0, actual - min(estimated, rate)) - max(0, min(estimated, rate) - actual)
        tokens = min(tokens, rate)
    }
}

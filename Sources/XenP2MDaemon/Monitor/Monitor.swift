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
/// and the poll loop that keeps them current. What a change means is `EventRules`'
/// business, how fast scans may map frames `ScanBudget`'s, whether the host's list can be
/// read `ListingHealth`'s. Scans themselves run off the actor (they block on the host),
/// so API reads never wait for a scan.
public actor Monitor {
    struct Record {
        var info: DomainInfo
        var latest: P2MReport?
        var history: [P2MReport] = []
        /// Why it is not scanned (dying, shut down), or nil.
        var stopping: String?
        /// Frames the last scan mapped: the budget's estimate for the next one.
        var lastFrames: UInt64?
        /// The latest report that is not a scan error: a failed scan (M2P not mappable,
        /// frames refusing to map) knows nothing of the P2M's format, stability or size,
        /// so those changes are judged between successful scans only.
        var lastScanned: P2MReport?
    }

    let host: any P2MHost
    let hub: EventHub
    let metrics: DaemonMetrics
    let logger: Logger
    /// The running config (reloads change it) and its bookkeeping.
    nonisolated let settings: LiveSettings
    var config: DaemonConfig { settings.config }
    private var scanner: P2MScanner
    private let budget: ScanBudget
    var records: [DomID: Record] = [:] {
        didSet { summariesBody.withLockedValue { $0 = nil } }
    }
    /// GET /v1/domains as encoded JSON, kept until a record changes: monitoring
    /// clients poll it far more often than scans change it, and encoding hundreds of
    /// summaries per request is what bounded throughput under load. Readable without
    /// entering the actor, which is busy recording results while a poll runs.
    /// A ByteBuffer, so every answer shares its storage instead of copying ~100 KB.
    nonisolated let summariesBody = NIOLockedValueBox<ByteBuffer?>(nil)
    private var manualScans: [DomID: Task<P2MReport?, Never>] = [:]
    let startedAt = ContinuousClock.now
    private(set) var polls: UInt64 = 0
    var lastPollAt: Date?
    var listing = ListingHealth() {
        didSet { summariesBody.withLockedValue { $0 = nil } }
    }
    var lastPollDuration: Double?
    /// Set while a poll runs and refreshed on each finished scan; the watchdog stops
    /// pinging when it gets old (a hung host call), and systemd restarts the service.
    private(set) var busySince: ContinuousClock.Instant?
    private var readyContinuations: [CheckedContinuation<Void, Never>] = []
    /// Finished polls, numbered, for the backend's own work between polls (the simulator
    /// moves its fleet then). One reader; only the newest number is kept for it.
    nonisolated let pollsFinished: AsyncStream<UInt64>
    private let pollsFinishedSink: AsyncStream<UInt64>.Continuation

    init(host: any P2MHost, settings: LiveSettings, hub: EventHub, metrics: DaemonMetrics, logger: Logger) {
        self.host = host
        self.settings = settings
        self.hub = hub
        self.metrics = metrics
        self.logger = logger
        let config = settings.config
        scanner = P2MScanner(host: host, options: Self.scanOptions(config))
        budget = ScanBudget(framesPerSecond: config.scanBudgetFramesPerSecond)
        (pollsFinished, pollsFinishedSink) = AsyncStream.makeStream(of: UInt64.self, bufferingPolicy: .bufferingNewest(1))
        metrics.incidents.set(to: Double(hub.incidentCount))
    }

    static func scanOptions(_ c: DaemonConfig) -> ScanOptions {
        var o = ScanOptions()
        o.probeDataFrames = c.probeDataFrames
        o.sampleLimit = c.sampleLimit
        o.batchFrames = c.batchFrames
        o.verifyPeriodScans = c.verifyPeriodPolls
        return o
    }

    // MARK: - Configuration

    /// A reload took effect (`settings` has it already): scan with the new options and rate.
    func apply(config new: DaemonConfig) async {
        scanner = P2MScanner(host: host, options: Self.scanOptions(new))
        await budget.setRate(new.scanBudgetFramesPerSecond)
    }

    // MARK: - Polling

    /// One cycle: discover domains, scan the live ones within the concurrency limit and
    /// the frame budget, and publish what changed.
    public func poll() async {
        let clock = ContinuousClock()
        let start = clock.now
        busySince = start
        defer { busySince = nil }
        // Incidents held in memory after a failed append get another chance each poll.
        hub.retryPersisting()
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
        // The backend names the domain it runs in; the metrics label it.
        if let caller = infos.first(where: \.isCaller)?.domid { metrics.callingDomain = caller }
        let seen = Set(infos.map(\.domid))
        scanner.retainMemory(of: seen)
        for (domid, rec) in records where !seen.contains(domid) {
            gone(domid, rec, why: "destroyed")
        }
        var due: [(DomID, String, UInt64)] = []
        for info in infos {
            if let rec = records[info.domid], rec.info.uuid != info.uuid {
                let old = rec.latest?.uuid ?? rec.info.uuidString
                records[info.domid] = nil
                metrics.remove(info.domid)
                hub.publish(EventRules.reused(info.domid, latest: rec.latest, oldUUID: old, newUUID: info.uuidString))
            }
            var rec = records[info.domid] ?? Record(info: info)
            rec.info = info
            if info.dying || info.shutdown {
                let why = info.dying ? "dying" : "shut down"
                if rec.stopping == nil {
                    rec.stopping = why
                    hub.publish(EventRules.stopping(info.domid, name: rec.latest?.name ?? host.domainName(info.domid),
                                                    latest: rec.latest, uuid: info.uuidString, why: why))
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
        metrics.incidentLogUnpersisted.set(to: Double(hub.persistence?.unpersistedEvents ?? 0))
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
        pollsFinishedSink.yield(polls)
    }

    /// Listing failed: keep every record as it was, say so once in the log, and report
    /// it until it works again.
    private func listingFailed(_ e: HostError) {
        let text = "\(e)"
        if listing.failed(text) {
            logger.error("cannot list domains; keeping the last known reports until it works again", metadata: [
                "error": "\(text)", "domains_kept": "\(records.count)",
            ])
        }
        metrics.scanErrors.increment()
        metrics.listingFailures.set(to: Double(listing.state.consecutiveFailures))
    }

    private func listingWorked() {
        if let ended = listing.worked() {
            logger.notice("domain listing works again", metadata: [
                "failed_polls": "\(ended.consecutiveFailures)", "last_error": "\(ended.lastError ?? "")",
            ])
            metrics.listingFailures.set(to: 0)
        }
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
        hub.publish(EventRules.gone(domid, latest: rec.latest, uuid: rec.info.uuidString, why: why))
        metrics.incidents.set(to: Double(hub.incidentCount))
    }

    /// Stores a finished scan and publishes what changed since the previous one.
    func record(_ r: P2MReport, uuid: String, vanished: Bool) {
        guard var rec = records[r.domid], rec.info.uuidString == uuid else { return }
        if vanished {
            gone(r.domid, rec, why: HostError.vanishedDuringScan)
            return
        }
        busySince = busySince.map { _ in .now }
        metrics.scans.increment()
        if r.severity == .error { metrics.scanErrors.increment() }
        for e in EventRules.afterScan(latest: rec.latest, lastScanned: rec.lastScanned, current: r) { hub.publish(e) }
        rec.latest = r
        if r.severity != .error { rec.lastScanned = r }
        rec.lastFrames = r.stats.framesMapped
        rec.history.append(r)
        if rec.history.count > config.historyLength { rec.history.removeFirst(rec.history.count - config.historyLength) }
        records[r.domid] = rec
        metrics.update(r)
        metrics.incidents.set(to: Double(hub.incidentCount))
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
        let stale = listing.problem.map { $0 + "; this is the last known report" }
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
                // Asked for by name: every entry, whatever the incremental schedule says.
                guard let r = await runScan(nice: nice, { scanner.scan(domid, verifyAll: true) }) else { return nil }
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
}

import Foundation
import Logging
import P2MEngine
import XenP2MAPI
#if canImport(Glibc)
import Glibc
#endif

/// The incident log: `incidents.jsonl` in the state directory, one JSON event per line,
/// appended with O_APPEND and fsync'd before the event is shown to anyone.
///
/// Why a flat file and not an embedded database: incidents are written rarely (state
/// changes, not polls), read back whole at start-up and never updated in place. An
/// append-only file with fsync per record gives the only guarantee needed (an event a
/// client has seen survives kill -9 and power loss), a torn last line after a crash is
/// detected and skipped on load, and operators can read it with `tail`/`jq` on a dom0
/// that has no other tooling. The file is rotated once it grows past `rotateBytes`.
final class IncidentLog: @unchecked Sendable {
    let path: String
    let rotateBytes: Int
    private let lock = NSLock()
    private var fd: Int32
    private var size: Int
    private let logger: Logger

    /// Events loaded at open, oldest first (at most `keep`).
    let loaded: [DaemonEvent]
    /// Highest sequence number found (0 when empty).
    let lastSeq: UInt64
    let skippedLines: Int

    init(directory: String, keep: Int = 1000, rotateBytes: Int = 16 << 20, logger: Logger) throws {
        self.logger = logger
        self.rotateBytes = rotateBytes
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o750])
        path = directory + "/incidents.jsonl"
        var events: [DaemonEvent] = []
        var skipped = 0
        let decoder = APIJSON.decoder()
        for file in [path + ".1", path] {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            for line in data.split(separator: 10, omittingEmptySubsequences: true) {
                if let e = try? decoder.decode(DaemonEvent.self, from: Data(line)) {
                    events.append(e)
                } else {
                    skipped += 1
                }
            }
        }
        lastSeq = events.map(\.seq).max() ?? 0
        loaded = Array(events.suffix(keep))
        skippedLines = skipped
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw IncidentLogError(message: "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        fstat(fd, &st)
        size = Int(st.st_size)
        // A crash mid-write can leave a line without its newline; start on a fresh line
        // so the next record is not glued to the torn one.
        if size > 0, let h = FileHandle(forReadingAtPath: path) {
            try? h.seek(toOffset: UInt64(size - 1))
            if let last = try? h.read(upToCount: 1), last != Data([10]) {
                _ = "\n".withCString { write(fd, $0, 1) }
                size += 1
            }
            try? h.close()
        }
        if skipped > 0 {
            logger.warning("incident log: skipped unreadable lines (torn write after a crash?)", metadata: ["path": "\(path)", "lines": "\(skipped)"])
        }
    }

    deinit { close(fd) }

    /// Appends and syncs one event; returns only once it is on disk.
    func append(_ event: DaemonEvent) {
        var data: Data
        do {
            data = try APIJSON.encoder().encode(event)
        } catch {
            logger.error("incident log: cannot encode event", metadata: ["error": "\(error)"])
            return
        }
        data.append(10)
        lock.lock(); defer { lock.unlock() }
        if size + data.count > rotateBytes { rotate() }
        let ok = data.withUnsafeBytes { raw -> Bool in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                off += n
            }
            return true
        }
        if !ok || fsync(fd) != 0 {
            logger.error("incident log: write failed; the event is kept in memory only",
                         metadata: ["path": "\(path)", "errno": "\(String(cString: strerror(errno)))"])
            return
        }
        size += data.count
    }

    private func rotate() {
        fsync(fd)
        close(fd)
        if rename(path, path + ".1") != 0 {
            logger.error("incident log: rotation failed", metadata: ["errno": "\(String(cString: strerror(errno)))"])
        }
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        size = 0
        // The rename must reach the disk too, or a crash could resurrect the old name.
        let dir = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY)
        if dir >= 0 {
            fsync(dir)
            close(dir)
        }
    }
}

struct IncidentLogError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// Fans events out to `watch` clients and keeps the recent ones for `?since=`.
final class EventHub: @unchecked Sendable {
    private let lock = NSLock()
    private var recent: [DaemonEvent]
    private let keep: Int
    private var nextSeq: UInt64
    private var subscribers: [UInt64: AsyncStream<DaemonEvent>.Continuation] = [:]
    private var nextSubscriber: UInt64 = 0
    private var finished = false
    private(set) var incidentCount: UInt64 = 0
    let log: IncidentLog?

    init(log: IncidentLog?, keep: Int = 1000) {
        self.log = log
        self.keep = keep
        recent = log?.loaded ?? []
        nextSeq = (log?.lastSeq ?? 0) + 1
        incidentCount = UInt64(recent.count)
    }

    var lastSeq: UInt64 {
        lock.lock(); defer { lock.unlock() }
        return nextSeq - 1
    }

    /// Numbers, persists (incidents only) and broadcasts an event.
    @discardableResult
    func publish(kind: EventKind, domid: UInt32, name: String?, uuid: String?, severity: Severity?,
                 previous: String? = nil, current: String? = nil, message: String) -> DaemonEvent {
        lock.lock()
        let e = DaemonEvent(seq: nextSeq, time: Date(), kind: kind, domid: domid, name: name, uuid: uuid,
                            severity: severity, previous: previous, current: current, message: message)
        nextSeq += 1
        // Persist while holding the lock so the file's order is the sequence order.
        if kind.isIncident {
            log?.append(e)
            incidentCount += 1
        }
        recent.append(e)
        if recent.count > keep { recent.removeFirst(recent.count - keep) }
        let subs = Array(subscribers.values)
        lock.unlock()
        for s in subs { s.yield(e) }
        return e
    }

    /// Events after `since` still in memory, plus a live stream of new ones (nil when
    /// `follow` is false). Subscribing and reading the backlog happen under one lock, so
    /// no event falls between them.
    func subscribe(since: UInt64?, follow: Bool) -> (backlog: [DaemonEvent], live: AsyncStream<DaemonEvent>?) {
        lock.lock(); defer { lock.unlock() }
        let backlog = since.map { s in recent.filter { $0.seq > s } } ?? []
        guard follow, !finished else { return (backlog, nil) }
        let (stream, cont) = AsyncStream<DaemonEvent>.makeStream(bufferingPolicy: .bufferingNewest(1000))
        let id = nextSubscriber
        nextSubscriber += 1
        subscribers[id] = cont
        cont.onTermination = { [weak self] _ in self?.unsubscribe(id) }
        return (backlog, stream)
    }

    private func unsubscribe(_ id: UInt64) {
        lock.lock(); defer { lock.unlock() }
        subscribers[id] = nil
    }

    /// Ends every stream (shutdown), so `watch` clients see a clean end of response.
    func finishAll() {
        lock.lock()
        finished = true
        let subs = Array(subscribers.values)
        subscribers = [:]
        lock.unlock()
        for s in subs { s.finish() }
    }
}

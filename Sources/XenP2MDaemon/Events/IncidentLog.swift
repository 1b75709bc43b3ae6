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
                // On a full disk this fails too; the next successful append adds it.
                if "\n".withCString({ write(fd, $0, 1) }) == 1 { size += 1 } else { newlineOwed = true }
            }
            try? h.close()
        }
        if skipped > 0 {
            logger.warning("incident log: skipped unreadable lines (torn write after a crash?)", metadata: ["path": "\(path)", "lines": "\(skipped)"])
        }
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Encoded lines not on disk yet, oldest first: a failed append (disk full, I/O
    /// error) keeps its event here and later appends write the backlog first, so the
    /// file stays in sequence order.
    private var pending: [Data] = []
    /// Held lines beyond this are dropped oldest first (they are still served from memory).
    static let maxPending = 10_000
    private var dropped: UInt64 = 0
    private var failures: UInt64 = 0
    private var lastError: String?
    private var failingSince: Date?
    /// The file ends in a torn line whose newline could not be written at open.
    private var newlineOwed = false

    /// Appends and syncs one event; returns once it is on disk, or once it is held in
    /// memory because the write failed (then `status()` says so and `retry()` or the
    /// next append writes it).
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
        pending.append(data)
        if pending.count > Self.maxPending {
            pending.removeFirst(pending.count - Self.maxPending)
            dropped &+= 1
        }
        flushLocked()
    }

    /// Writes held events if there are any (called every poll, so a freed disk is noticed
    /// without waiting for the next incident). Returns whether nothing is held any more.
    @discardableResult
    func retry() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if !pending.isEmpty { flushLocked() }
        return pending.isEmpty
    }

    func status() -> IncidentLogHealth {
        lock.lock(); defer { lock.unlock() }
        return IncidentLogHealth(path: path, writable: failingSince == nil, lastError: lastError,
                                 unpersistedEvents: pending.count, droppedEvents: dropped, writeFailures: failures,
                                 failingSince: failingSince)
    }

    /// Writes every held line with one write and one fsync: all of them reach the disk or
    /// none (a partial write is cut off again, so no torn line stays behind).
    private func flushLocked() {
        var data = Data()
        if newlineOwed { data.append(10) }
        for p in pending { data.append(p) }
        if fd < 0 {
            fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard fd >= 0 else { return failed("open", errno, data.count) }
            var st = stat()
            fstat(fd, &st)
            size = Int(st.st_size)
        }
        if size > 0 && size + data.count > rotateBytes { rotate() }
        guard fd >= 0 else { return failed("open after rotation", errno, data.count) }
        var err: Int32 = 0
        let written = data.withUnsafeBytes { raw -> Bool in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    err = errno
                    return false
                }
                off += n
            }
            return true
        }
        if !written || fsync(fd) != 0 {
            if written { err = errno }
            // Drop whatever part did land, so the next attempt starts on a clean line.
            if ftruncate(fd, off_t(size)) != 0 {
                logger.error("incident log: cannot cut off a partly written record", metadata: ["path": "\(path)", "errno": "\(String(cString: strerror(errno)))"])
                var st = stat()
                if fstat(fd, &st) == 0 { size = Int(st.st_size) }
            }
            return failed(written ? "fsync" : "write", err, data.count)
        }
        size += data.count
        newlineOwed = false
        let held = pending.count
        pending.removeAll()
        if let since = failingSince {
            failingSince = nil
            logger.notice("incident log: writable again; held events written", metadata: [
                "path": "\(path)", "events": "\(held)", "failing_since": "\(since)", "dropped": "\(dropped)",
            ])
        }
    }

    private func failed(_ operation: String, _ code: Int32, _ bytes: Int) {
        failures &+= 1
        let text = "\(operation) \(path): \(String(cString: strerror(code)))"
        if failingSince == nil || text != lastError {
            logger.error("incident log: write failed; the event is kept in memory and written once the disk accepts it",
                         metadata: ["path": "\(path)", "error": "\(text)", "held_events": "\(pending.count)", "bytes": "\(bytes)"])
        }
        lastError = text
        if failingSince == nil { failingSince = Date() }
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

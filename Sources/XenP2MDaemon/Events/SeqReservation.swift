import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Keeps event numbers increasing across restarts, kill -9 included, for streamed-only
/// events too (the incident log has only incidents, so after a restart its last number
/// is below the ballooning events a watcher saw). `seq.reserved` in the state directory
/// holds a number R: every event so far was numbered below R. Numbers are handed out
/// below R in memory; crossing R writes the next block's end first (write, fsync,
/// rename, fsync of the directory), so one fsync per `block` events instead of one per
/// event. A restart starts at R; the numbers of a block a crash left unused are skipped,
/// which `seq` allows (strictly increasing, not dense).
final class SeqReservation: @unchecked Sendable {
    static let defaultBlock: UInt64 = 4096

    let path: String
    let block: UInt64
    private let directory: String
    private let logger: Logger
    /// Numbers below this are covered by the file (or were read from it at start).
    private(set) var reservedUpTo: UInt64
    /// Consecutive failed writes of the file (0: it is current).
    private(set) var failures = 0
    private(set) var lastError: String?

    /// The first number not used before (the file's R, 1 without a file); a file that is
    /// not one decimal number is refused, like any other state the daemon cannot trust.
    let firstFree: UInt64

    init(directory: String, block: UInt64 = defaultBlock, logger: Logger) throws {
        self.directory = directory
        self.block = max(1, block)
        self.logger = logger
        path = directory + "/seq.reserved"
        if let data = FileManager.default.contents(atPath: path) {
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard let r = UInt64(text), r > 0 else {
                throw IncidentLogError(message: "\(path): not a sequence number (\(text.prefix(40).debugDescription)); remove it only if its events are gone too")
            }
            firstFree = r
        } else if FileManager.default.fileExists(atPath: path) {
            throw IncidentLogError(message: "cannot read \(path)")
        } else {
            firstFree = 1
        }
        reservedUpTo = firstFree
    }

    /// Makes sure `seq` is covered before it is used. Returns false when the file could
    /// not be written: the number is still used (events keep flowing and stay ordered in
    /// this run), and the next call tries again.
    @discardableResult
    func cover(_ seq: UInt64) -> Bool {
        guard seq >= reservedUpTo || failures > 0 else { return true }
        let target = seq + block
        do {
            try store(target)
            reservedUpTo = target
            if failures > 0 { logger.notice("event numbers are reserved again", metadata: ["path": "\(path)"]) }
            failures = 0
            lastError = nil
            return true
        } catch {
            if failures == 0 {
                logger.error("cannot reserve event numbers: after a restart they may repeat",
                             metadata: ["path": "\(path)", "error": "\(error)"])
            }
            failures += 1
            lastError = "\(error)"
            return false
        }
    }

    private func store(_ value: UInt64) throws {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw IncidentLogError(message: "open \(tmp): \(String(cString: strerror(errno)))") }
        let text = "\(value)\n"
        let ok = text.withCString { Glibc.write(fd, $0, strlen($0)) == strlen($0) } && fsync(fd) == 0
        let err = errno
        close(fd)
        guard ok else {
            unlink(tmp)
            throw IncidentLogError(message: "write \(tmp): \(String(cString: strerror(err)))")
        }
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw IncidentLogError(message: "rename \(tmp): \(String(cString: strerror(e)))")
        }
        // The rename itself must survive a power loss, or the old, lower R comes back.
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
    }
}

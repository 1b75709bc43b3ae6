import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The listen backlog: as deep as the kernel allows. A burst of clients connecting at once
/// (each with an ordinary non-blocking connect) is otherwise refused with EAGAIN by the
/// kernel once the queue is full, before the daemon could answer 503 or anything else.
enum ListenBacklog {
    static let procPath = "/proc/sys/net/core/somaxconn"

    /// `net.core.somaxconn` as the kernel has it now (it clamps any larger request to it),
    /// or the C library's `SOMAXCONN` where /proc cannot be read.
    static func current(procPath: String = procPath) -> Int32 {
        if let text = try? String(contentsOfFile: procPath, encoding: .utf8),
           let n = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), n > 0 {
            return n
        }
        return Int32(SOMAXCONN)
    }
}

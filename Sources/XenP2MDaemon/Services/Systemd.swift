import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The sd_notify protocol spoken directly: one datagram to $NOTIFY_SOCKET per message.
/// A few lines of socket code instead of a libsystemd dependency on every dom0.
public struct SystemdNotifier: Sendable {
    public let socketPath: String?
    /// From WATCHDOG_USEC, when systemd expects pings from this process.
    public let watchdogInterval: Duration?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        socketPath = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        let forUs = environment["WATCHDOG_PID"].map { Int32($0) == getpid() } ?? true
        if forUs, let us = environment["WATCHDOG_USEC"].flatMap(UInt64.init), us > 0 {
            watchdogInterval = .microseconds(Int64(us))
        } else {
            watchdogInterval = nil
        }
    }

    public var enabled: Bool { socketPath != nil }

    /// Sends `state` (e.g. "READY=1\nSTATUS=..."). Failures are ignored: the service must
    /// run the same with or without a supervisor listening.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        guard let path = socketPath else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        // '@' names a socket in the abstract namespace: its first byte is NUL.
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes.first == 0 ? 0 : 1))
        let msg = Array(state.utf8)
        let n = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                msg.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, len) }
            }
        }
        return n == msg.count
    }
}

/// Socket activation: the listening socket systemd passed (fd 3), if it was passed to
/// this process. The variables are removed so children do not take the socket too.
public func takeActivatedSocket(environment: [String: String] = ProcessInfo.processInfo.environment) -> Int32? {
    guard let pid = environment["LISTEN_PID"].flatMap(Int32.init), pid == getpid(),
          let n = environment["LISTEN_FDS"].flatMap(Int.init), n >= 1 else { return nil }
    unsetenv("LISTEN_PID")
    unsetenv("LISTEN_FDS")
    unsetenv("LISTEN_FDNAMES")
    let fd: Int32 = 3 // SD_LISTEN_FDS_START
    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    return fd
}

/// The filesystem path a listening Unix socket is bound to (for activated sockets).
func boundPath(of fd: Int32) -> String? {
    var addr = sockaddr_un()
    var len = socklen_t(MemoryLayout<sockaddr_un>.size)
    let rc = withUnsafeMutablePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    guard rc == 0, addr.sun_family == sa_family_t(AF_UNIX) else { return nil }
    return withUnsafeBytes(of: addr.sun_path) { raw in
        let bytes = raw.prefix { $0 != 0 }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }
}

/// Credentials of the process on the other end of a Unix socket (SO_PEERCRED).
struct PeerCredentials: Sendable, Equatable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32

    /// Root, or a member of `group` (primary or supplementary, read from /proc since
    /// SO_PEERCRED carries only the primary group).
    func mayControl(group: gid_t?) -> Bool {
        if uid == 0 { return true }
        guard let group else { return false }
        if gid == group { return true }
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return false }
        for line in status.split(separator: "\n") where line.hasPrefix("Groups:") {
            return line.dropFirst("Groups:".count).split(whereSeparator: { $0 == " " || $0 == "\t" })
                .contains { gid_t($0) == group }
        }
        return false
    }
}

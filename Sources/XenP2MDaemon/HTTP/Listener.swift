import NIOCore
import NIOHTTP1
import XenP2MAPI
#if canImport(Glibc)
import Glibc
#endif

/// Where the API listens.
enum Listener: Sendable {
    /// Bind (and own) a socket file, with the given mode and group.
    case unixPath(String, mode: UInt32, group: gid_t?)
    /// An already bound socket from systemd (its unit sets mode and group).
    case activated(Int32)
    /// The optional metrics-only TCP listener.
    case tcp(host: String, port: Int)
}

/// Layout of Linux's `struct ucred` (SO_PEERCRED), which Glibc's module does not export
/// without _GNU_SOURCE.
struct UCred: Sendable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
}

/// Limits applied to every connection.
struct HTTPLimits: Sendable {
    var maxBodyBytes: Int
    var maxHeaders: Int
    var idleTimeout: Double
    /// Seconds from a request's first byte until its head must be complete.
    var requestHeadTimeout: Double
}

typealias HTTPConnection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

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
    /// Seconds from a request's complete head until its body must be complete (408).
    var requestBodyTimeout: Double
    /// Open connections of one listener (event streams not counted) beyond which a new
    /// one is answered 503 and closed.
    var maxConnections: Int
    /// Event streams following at once (`GET /v1/events` without `follow=0`).
    var maxEventStreams: Int
}

typealias HTTPConnection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

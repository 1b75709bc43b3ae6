import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Why a GET to an HTTP server over TCP (Prometheus, for `xenp2mctl fleet`) failed before
/// an answer arrived. Each case names the server, so the one line on stderr says where.
public enum TCPClientError: Error, CustomStringConvertible, Equatable {
    case resolve(host: String, reason: String)
    case connect(server: String, reason: String)
    case io(server: String, reason: String)
    case badResponse(server: String, reason: String)

    public var description: String {
        switch self {
        case .resolve(let h, let r): return "cannot resolve \(h): \(r)"
        case .connect(let s, let r): return "cannot connect to \(s): \(r)"
        case .io(let s, let r): return "talking to \(s) failed: \(r)"
        case .badResponse(let s, let r): return "\(s) sent a response this client cannot read: \(r)"
        }
    }
}

/// GET over plain HTTP/1.1 and TCP, on the same POSIX calls and response reader as
/// `UnixHTTPClient`. Hand-written rather than URLSession for the same reason that client
/// is: the CLI makes one or a few requests per run and stays on Foundation and libc (on
/// Linux, URLSession is FoundationNetworking over libcurl, one more library in dom0 for a
/// GET). No TLS: put a local Prometheus (or a proxy) on http, or use curl for https.
public struct TCPHTTPClient: Sendable {
    public var host: String
    public var port: UInt16
    /// Bound on connecting and on each wait for data.
    public var timeout: Double

    public init(host: String, port: UInt16, timeout: Double = 15) {
        self.host = host
        self.port = port
        self.timeout = timeout
    }

    var server: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// One GET (`target` is the path and query), whole answer, `Connection: close`.
    public func get(_ target: String) throws(TCPClientError) -> HTTPResponse {
        let fd = try connect()
        defer { close(fd) }
        let head = "GET \(target) HTTP/1.1\r\nHost: \(server)\r\nUser-Agent: xenp2mctl\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        do {
            try writeAll(fd, Array(head.utf8))
            var reader = ResponseReader(fd: fd)
            return try reader.readResponse()
        } catch {
            switch error {
            case .badResponse(let r): throw .badResponse(server: server, reason: r)
            case .io(let r): throw .io(server: server, reason: r)
            default: throw .io(server: server, reason: "\(error)")
            }
        }
    }

    /// Resolves `host` and connects to the first address that answers.
    func connect() throws(TCPClientError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw .resolve(host: host, reason: String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(first) }
        var reason = "no address"
        var next: UnsafeMutablePointer<addrinfo>? = first
        while let ai = next {
            next = ai.pointee.ai_next
            let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype, ai.pointee.ai_protocol)
            guard fd >= 0 else {
                reason = String(cString: strerror(errno))
                continue
            }
            // Linux bounds connect() by the send timeout too.
            var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            if Glibc.connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 { return fd }
            let e = errno
            reason = e == EINPROGRESS || e == EAGAIN ? "timed out after \(timeout) s" : String(cString: strerror(e))
            close(fd)
        }
        throw .connect(server: server, reason: reason)
    }
}

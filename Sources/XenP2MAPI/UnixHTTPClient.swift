import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Why a request to the daemon failed before an HTTP answer arrived.
public enum ClientError: Error, CustomStringConvertible, Equatable {
    /// No socket file, or nobody listening: the daemon is not running.
    case notRunning(path: String, reason: String)
    case permissionDenied(path: String)
    case io(String)
    case badResponse(String)

    public var description: String {
        switch self {
        case .notRunning(let path, let reason):
            return "xenp2md is not running (\(reason) on \(path)); start it with 'systemctl start xenp2md' or pick another socket with --socket / XENP2M_SOCKET"
        case .permissionDenied(let path):
            return "permission denied on \(path): run as root or as a member of the socket's group"
        case .io(let s): return "talking to xenp2md failed: \(s)"
        case .badResponse(let s): return "xenp2md sent a response this client cannot read: \(s)"
        }
    }
}

public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: Data

    public func header(_ name: String) -> String? {
        headers.first { $0.0.caseInsensitiveCompare(name) == .orderedSame }?.1
    }

    /// The body as the API's JSON error, when it is one.
    public var apiError: APIError? { try? APIJSON.decoder().decode(APIError.self, from: body) }
}

/// A minimal HTTP/1.1 client over a Unix socket, on plain POSIX calls: the CLI needs one
/// request per run, and this keeps NIO out of it. One connection per request
/// (`Connection: close`), so the body ends at EOF unless it is chunked.
public struct UnixHTTPClient: Sendable {
    public var socketPath: String
    /// Receive timeout for ordinary requests; streaming requests wait indefinitely.
    public var timeout: Double

    public init(socketPath: String, timeout: Double = 60) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    /// Connects and returns the socket fd.
    public func connect() throws(ClientError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw .io("socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socketPath.utf8)
        let cap = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < cap else {
            close(fd)
            throw .io("socket path longer than \(cap - 1) bytes: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if rc != 0 {
            let e = errno
            close(fd)
            switch e {
            case ENOENT: throw .notRunning(path: socketPath, reason: "no socket")
            case ECONNREFUSED: throw .notRunning(path: socketPath, reason: "connection refused")
            case EACCES, EPERM: throw .permissionDenied(path: socketPath)
            default: throw .io("connect \(socketPath): \(String(cString: strerror(e)))")
            }
        }
        return fd
    }

    /// One request, whole answer.
    public func request(_ method: String, _ path: String, body: Data? = nil) throws(ClientError) -> HTTPResponse {
        let fd = try connect()
        defer { close(fd) }
        setReceiveTimeout(fd, timeout)
        try sendRequest(fd, method, path, body: body)
        var reader = ResponseReader(fd: fd)
        return try reader.readResponse()
    }

    /// A streamed request: `onLine` gets each complete line of the body as it arrives
    /// and returns false to stop. Returns the status and headers; on a non-2xx status
    /// the whole body goes to `onLine` as one piece.
    @discardableResult
    public func stream(_ method: String, _ path: String, onLine: (String) -> Bool) throws(ClientError) -> Int {
        let fd = try connect()
        defer { close(fd) }
        try sendRequest(fd, method, path, body: nil)
        var reader = ResponseReader(fd: fd)
        let (status, headers) = try reader.readHead()
        var pending = Data()
        var stopped = false
        do {
            try reader.readBody(headers: headers) { chunk in
                pending.append(chunk)
                while let nl = pending.firstIndex(of: 10) {
                    let line = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                    pending = Data(pending[(nl + 1)...])
                    if !onLine(line) {
                        stopped = true
                        return false
                    }
                }
                return true
            }
        } catch {
            if !stopped { throw error }
        }
        if !stopped && !pending.isEmpty { _ = onLine(String(decoding: pending, as: UTF8.self)) }
        return status
    }

    private func setReceiveTimeout(_ fd: Int32, _ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    private func sendRequest(_ fd: Int32, _ method: String, _ path: String, body: Data?) throws(ClientError) {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: xenp2md\r\nUser-Agent: xenp2mctl\r\nConnection: close\r\n"
        head += "Content-Length: \(body?.count ?? 0)\r\n\r\n"
        var bytes = Array(head.utf8)
        if let body { bytes += body }
        try writeAll(fd, bytes)
    }
}

/// Writes every byte or reports why not.
public func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(ClientError) {
    var off = 0
    while off < bytes.count {
        let n = bytes[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 {
            if errno == EINTR { continue }
            throw .io("send: \(String(cString: strerror(errno)))")
        }
        off += n
    }
}

/// Buffered reads of one HTTP response.
struct ResponseReader {
    let fd: Int32
    var buffer = Data()
    var eof = false

    init(fd: Int32) { self.fd = fd }

    mutating func fill() throws(ClientError) {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .io("timed out waiting for the answer") }
                throw .io("recv: \(String(cString: strerror(errno)))")
            }
            if n == 0 { eof = true } else { buffer.append(contentsOf: chunk[0..<n]) }
            return
        }
    }

    mutating func readLine() throws(ClientError) -> String {
        while true {
            if let r = buffer.range(of: Data([13, 10])) {
                let line = String(decoding: buffer[buffer.startIndex..<r.lowerBound], as: UTF8.self)
                buffer = Data(buffer[r.upperBound...])
                return line
            }
            if eof { throw .badResponse("connection closed in the middle of the header") }
            try fill()
        }
    }

    mutating func readHead() throws(ClientError) -> (Int, [(String, String)]) {
        let statusLine = try readLine()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw .badResponse("status line '\(statusLine)'")
        }
        var headers: [(String, String)] = []
        while true {
            let line = try readLine()
            if line.isEmpty { break }
            guard let colon = line.firstIndex(of: ":") else { throw .badResponse("header line '\(line)'") }
            headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        return (status, headers)
    }

    /// The whole response: head, then the body to its end.
    mutating func readResponse() throws(ClientError) -> HTTPResponse {
        let (status, headers) = try readHead()
        var body = Data()
        try readBody(headers: headers) {
            body.append($0)
            return true
        }
        return HTTPResponse(status: status, headers: headers, body: body)
    }

    /// Feeds the body to `sink` as it arrives; `sink` returns false to stop reading.
    mutating func readBody(headers: [(String, String)], _ sink: (Data) -> Bool) throws(ClientError) {
        func header(_ n: String) -> String? { headers.first { $0.0.lowercased() == n }?.1 }
        if header("transfer-encoding")?.lowercased().contains("chunked") == true {
            while true {
                let sizeLine = try readLine()
                guard let size = Int(sizeLine.split(separator: ";")[0].trimmingCharacters(in: .whitespaces), radix: 16) else {
                    throw .badResponse("chunk size '\(sizeLine)'")
                }
                if size == 0 { return }
                while buffer.count < size + 2 {
                    if eof { throw .badResponse("connection closed inside a chunk") }
                    try fill()
                }
                let more = sink(Data(buffer.prefix(size)))
                buffer = Data(buffer.dropFirst(size + 2))
                if !more { return }
            }
        } else if let len = header("content-length").flatMap({ Int($0) }) {
            while buffer.count < len {
                if eof { throw .badResponse("connection closed after \(buffer.count) of \(len) body bytes") }
                try fill()
            }
            _ = sink(Data(buffer.prefix(len)))
        } else {
            while !eof {
                if !buffer.isEmpty {
                    let more = sink(buffer)
                    buffer = Data()
                    if !more { return }
                }
                try fill()
            }
            if !buffer.isEmpty { _ = sink(buffer) }
        }
    }
}

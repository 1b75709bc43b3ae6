import ArgumentParser
import Foundation
import XenP2MAPI

/// Where xenp2md listens (`--socket`, else $XENP2M_SOCKET, else the default path).
struct Connection: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Socket of xenp2md (default: $XENP2M_SOCKET or \(defaultSocketPath)).", valueName: "path"),
            completion: .file())
    var socket: String?

    var path: String {
        socket ?? ProcessInfo.processInfo.environment["XENP2M_SOCKET"].flatMap { $0.isEmpty ? nil : $0 } ?? defaultSocketPath
    }

    var client: UnixHTTPClient { UnixHTTPClient(socketPath: path) }
}

/// A subcommand that asks the daemon. It declares `@OptionGroup var local: Connection`
/// and `@ParentCommand var root: XenP2Mctl` (ArgumentParser has no inherited options),
/// and gets the socket choice and the requests from here.
protocol DaemonCommand: ParsableCommand {
    var local: Connection { get }
    var root: XenP2Mctl { get }
}

extension DaemonCommand {
    /// `--socket` after the subcommand wins over one before it.
    var connection: Connection { local.socket == nil ? root.connection : local }

    /// A request that must answer 2xx; anything else is a `CLIError` with the daemon's words.
    func request(_ method: String, _ path: String) throws(CLIError) -> HTTPResponse {
        let r: HTTPResponse
        do {
            r = try connection.client.request(method, path)
        } catch {
            throw CLIError("\(error)")
        }
        guard (200..<300).contains(r.status) else {
            if let e = r.apiError { throw CLIError("\(e.code): \(e.message)") }
            throw CLIError("HTTP \(r.status) from xenp2md")
        }
        return r
    }

    func get(_ path: String) throws(CLIError) -> HTTPResponse { try request("GET", path) }
}

/// The daemon's answer as `T`, or a `CLIError` saying it could not be read.
func decode<T: Decodable>(_ type: T.Type, _ r: HTTPResponse) throws(CLIError) -> T {
    do {
        return try APIJSON.decoder().decode(type, from: r.body)
    } catch {
        throw CLIError("cannot read the daemon's answer: \(error)")
    }
}

/// Writes `data` to stdout, ending it with a newline if it has none.
func writeOut(_ data: Data) {
    FileHandle.standardOutput.write(data)
    if data.last != 10 { FileHandle.standardOutput.write(Data("\n".utf8)) }
}

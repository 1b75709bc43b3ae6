import Foundation
import NIOCore
import NIOHTTP1
import P2MEngine
import XenP2MAPI

enum APIResponse: Sendable {
    case full(HTTPResponseStatus, String, ByteBuffer, [(String, String)])
    case stream(backlog: [DaemonEvent], live: AsyncStream<DaemonEvent>?)

    static func json<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) -> APIResponse {
        do {
            var data = try APIJSON.encoder(pretty: true).encode(value)
            data.append(10)
            return .full(status, "application/json", ByteBuffer(bytes: data), [])
        } catch {
            return .error(.internalServerError, "internal", "cannot encode the answer: \(error)")
        }
    }

    static func error(_ status: HTTPResponseStatus, _ code: String, _ message: String, extra: [(String, String)] = []) -> APIResponse {
        var data = (try? APIJSON.encoder(pretty: false).encode(APIError(code: code, message: message))) ?? Data()
        data.append(10)
        return .full(status, "application/json", ByteBuffer(bytes: data), extra)
    }
}

/// Routing and answers of the v1 API, independent of the transport.
struct API: Sendable {
    let monitor: Monitor
    let hub: EventHub
    let metrics: DaemonMetrics
    /// Group allowed to trigger scans (besides root); read per request so a reload applies.
    let controlGroup: @Sendable () -> gid_t?

    func handle(method: HTTPMethod, uri: String, body: ByteBuffer, peer: PeerCredentials?) async -> APIResponse {
        guard let comps = URLComponents(string: uri), uri.hasPrefix("/") else {
            return .error(.badRequest, "bad_request", "request target '\(uri)' is not an absolute path")
        }
        let query = Dictionary((comps.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { $1 })
        // Split the still-encoded path at its literal slashes, then decode each segment:
        // routing on the decoded path would make `%2F` a separator (`1%2fscan` -> `1/scan`).
        var parts: [String] = []
        for raw in comps.percentEncodedPath.split(separator: "/", omittingEmptySubsequences: false).dropFirst() {
            guard let seg = String(raw).removingPercentEncoding else {
                return .error(.badRequest, "bad_request", "path segment '\(raw)' is not valid percent-encoded UTF-8")
            }
            guard !seg.contains("/") else {
                return .error(.badRequest, "bad_request", "an encoded '/' (%2F) is not allowed in a path segment")
            }
            parts.append(seg)
        }

        func only(_ allowed: HTTPMethod, _ body: () async -> APIResponse) async -> APIResponse {
            guard method == allowed else {
                return .error(.methodNotAllowed, "method_not_allowed", "\(method.rawValue) is not allowed on \(comps.path); use \(allowed.rawValue)",
                              extra: [("Allow", allowed.rawValue)])
            }
            return await body()
        }

        switch parts {
        case ["v1", "health"]:
            return await only(.GET) { .json(await monitor.health()) }
        case ["v1", "domains"]:
            return await only(.GET) {
                do {
                    if let cached = monitor.summariesBody.withLockedValue({ $0 }) { return .full(.ok, "application/json", cached, []) }
                    return .full(.ok, "application/json", try await monitor.summariesJSON(), [])
                } catch {
                    return .error(.internalServerError, "internal", "cannot encode the answer: \(error)")
                }
            }
        case ["metrics"]:
            return await only(.GET) {
                .full(.ok, "text/plain; version=0.0.4; charset=utf-8", ByteBuffer(string: metrics.text()), [])
            }
        case ["v1", "events"]:
            return await only(.GET) {
                var since: UInt64?
                if let s = query["since"] {
                    guard let v = UInt64(s) else { return .error(.badRequest, "bad_request", "since must be a non-negative integer (an event seq)") }
                    since = v
                }
                let follow: Bool
                switch query["follow"] ?? "1" {
                case "1", "true", "yes": follow = true
                case "0", "false", "no": follow = false
                default: return .error(.badRequest, "bad_request", "follow must be 0 or 1")
                }
                let sub = hub.subscribe(since: since, follow: follow)
                return .stream(backlog: sub.backlog, live: sub.live)
            }
        case let p where p.count >= 3 && p[0] == "v1" && p[1] == "domains":
            // Decimal digits only: UInt32("+1") would parse, and "+1" is not a domid.
            guard p[2].allSatisfy({ $0 >= "0" && $0 <= "9" }), let domid = DomID(p[2]) else {
                return .error(.badRequest, "bad_request", "'\(p[2])' is not a domain id (a decimal number 0..\(DomID.max))")
            }
            if p.count == 3 {
                return await only(.GET) {
                    do {
                        if query["history"] == "1" { return .json(try await monitor.history(domid)) }
                        return .json(try await monitor.report(domid))
                    } catch {
                        return .error(.notFound, "not_found", "no domain \(domid) (unknown, destroyed, or not scanned yet)")
                    }
                }
            }
            if p.count == 4 && p[3] == "scan" {
                return await only(.POST) {
                    guard let peer, peer.mayControl(group: controlGroup()) else {
                        return .error(.forbidden, "forbidden", "triggering a scan needs root or membership in the socket's group")
                    }
                    let defaultTimeout = monitor.settings.config.scanTimeoutSeconds
                    var timeout = defaultTimeout
                    if let t = query["timeout"] {
                        guard let v = Double(t), v > 0, v <= 3600 else {
                            return .error(.badRequest, "bad_request", "timeout must be seconds between 0 and 3600")
                        }
                        timeout = v
                    }
                    do throws(MonitorError) {
                        return .json(try await monitor.scanNow(domid, timeout: timeout))
                    } catch {
                        switch error {
                        case .notFound:
                            return .error(.notFound, "not_found", "no domain \(domid) on this host")
                        case .timeout(_, let t):
                            return .error(.gatewayTimeout, "timeout", "scan of domain \(domid) did not finish within \(t)s; its result will appear in GET /v1/domains/\(domid)")
                        case .shuttingDown:
                            return .error(.serviceUnavailable, "unavailable", "xenp2md is shutting down")
                        }
                    }
                }
            }
            if p.count == 4 && p[3] == "p2m" {
                return await only(.GET) { await p2mTable(domid, jsonLines: query["format"] == "jsonl") }
            }
            return .error(.notFound, "not_found", "no such endpoint \(comps.path)")
        default:
            return .error(.notFound, "not_found", "no such endpoint \(comps.path); see GET /v1/health, /v1/domains, /v1/domains/{domid}, POST /v1/domains/{domid}/scan, GET /v1/domains/{domid}/p2m, GET /v1/events, GET /metrics")
        }
    }
}

import NIOCore
import P2MEngine

extension API {
    /// GET /v1/domains/{domid}/p2m[?format=jsonl]: the table in xen-mfndump's text layout,
    /// or one JSON object per pfn.
    func p2mTable(_ domid: DomID, jsonLines: Bool) async -> APIResponse {
        guard let result = await monitor.p2mTable(domid) else {
            return .error(.serviceUnavailable, "unavailable", "xenp2md is shutting down")
        }
        switch result {
        case .success(let t):
            let text = jsonLines ? t.jsonLines() : t.mfndumpText()
            return .full(.ok, jsonLines ? "application/jsonl" : "text/plain; charset=utf-8", ByteBuffer(string: text), [])
        case .failure(let e):
            if e.isDomainGone { return .error(.notFound, "not_found", "no domain \(domid) on this host") }
            return .error(.unprocessableEntity, "unprocessable", "\(e)")
        }
    }
}

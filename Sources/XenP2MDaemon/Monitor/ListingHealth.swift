import Foundation
import XenP2MAPI

/// Whether the host's domain list can be read. While it cannot, the records are the last
/// known state (kept, not declared gone: a host that cannot answer has not destroyed its
/// guests) and are served marked stale.
struct ListingHealth: Sendable {
    private(set) var state = DomainListingHealth(ok: true, consecutiveFailures: 0, failures: 0, lastError: nil,
                                                 failingSince: nil, lastSuccessAt: nil)

    /// Counts a failed listing. True when it is news worth a log line: the first failure
    /// of a run, or a different error than the previous one.
    mutating func failed(_ error: String, at now: Date = Date()) -> Bool {
        let news = state.ok || state.lastError != error
        if state.ok { state.failingSince = now }
        state.ok = false
        state.consecutiveFailures &+= 1
        state.failures &+= 1
        state.lastError = error
        return news
    }

    /// Counts a listing that worked. Returns the run of failures it ends (for the log
    /// line), or nil when listing was working already.
    mutating func worked(at now: Date = Date()) -> DomainListingHealth? {
        let ended = state.ok ? nil : state
        state.ok = true
        state.consecutiveFailures = 0
        state.failingSince = nil
        state.lastSuccessAt = now
        return ended
    }

    /// "cannot list domains since T (N polls): error", or nil while listing works.
    var problem: String? {
        guard !state.ok else { return nil }
        let since = state.failingSince.map { " since " + ISO8601DateFormatter().string(from: $0) } ?? ""
        let n = state.consecutiveFailures
        return "cannot list domains\(since) (\(n) poll\(n == 1 ? "" : "s")): \(state.lastError ?? "unknown error")"
    }
}

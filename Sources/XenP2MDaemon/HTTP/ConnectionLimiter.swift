import NIOConcurrencyHelpers

/// The open connections of one listener, against `http.max_connections`, and how many of
/// them are following event streams, against `http.max_event_streams`: streams live for
/// hours and are counted apart, so watchers neither starve requests nor the reverse.
/// The maxima are passed at each admission, so a reload applies to the next connection.
final class ConnectionLimiter: Sendable {
    struct Counts: Equatable, Sendable {
        var requests = 0
        var streams = 0
    }

    private let counts = NIOLockedValueBox(Counts())

    var current: Counts { counts.withLockedValue { $0 } }

    /// A slot for a new connection, or nil when `max` request connections are open.
    func admit(max: Int) -> ConnectionSlot? {
        let ok = counts.withLockedValue { c -> Bool in
            guard c.requests < max else { return false }
            c.requests += 1
            return true
        }
        return ok ? ConnectionSlot(limiter: self) : nil
    }

    /// Moves one connection from the request count to the stream count, unless `max`
    /// streams are open (then it stays a request connection).
    fileprivate func toStream(max: Int) -> Bool {
        counts.withLockedValue { c in
            guard c.streams < max else { return false }
            c.requests -= 1
            c.streams += 1
            return true
        }
    }

    fileprivate func release(stream: Bool) {
        counts.withLockedValue { c in
            if stream { c.streams -= 1 } else { c.requests -= 1 }
        }
    }
}

/// What one admitted connection holds until it closes: a request slot, or a stream slot
/// once it follows events. Released once, however often `release` is called.
final class ConnectionSlot: Sendable {
    private enum State { case request, stream, released }

    private let limiter: ConnectionLimiter
    private let state = NIOLockedValueBox(State.request)

    fileprivate init(limiter: ConnectionLimiter) { self.limiter = limiter }

    /// Turns this connection into an event stream; false (and nothing changes) when the
    /// stream limit is reached.
    func becomeStream(max: Int) -> Bool {
        state.withLockedValue { s in
            guard s == .request, limiter.toStream(max: max) else { return false }
            s = .stream
            return true
        }
    }

    func release() {
        state.withLockedValue { s in
            switch s {
            case .request: limiter.release(stream: false)
            case .stream: limiter.release(stream: true)
            case .released: return
            }
            s = .released
        }
    }
}

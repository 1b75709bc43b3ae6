import Foundation
import P2MEngine
import XenP2MAPI

/// Fans events out to `watch` clients and keeps the recent ones for `?since=`.
final class EventHub: @unchecked Sendable {
    private let lock = NSLock()
    private var recent: [DaemonEvent]
    private let keep: Int
    private var nextSeq: UInt64
    private var subscribers: [UInt64: AsyncStream<DaemonEvent>.Continuation] = [:]
    private var nextSubscriber: UInt64 = 0
    private var finished = false
    private(set) var incidentCount: UInt64 = 0
    /// Where incidents are persisted (nil: memory only, for tests).
    private let log: IncidentLog?
    /// What keeps numbers increasing across restarts (nil: memory only, for tests).
    private let reservation: SeqReservation?

    init(log: IncidentLog?, reservation: SeqReservation? = nil, keep: Int = 1000) {
        self.log = log
        self.reservation = reservation
        self.keep = keep
        recent = log?.loaded ?? []
        // The log alone for a state directory from before seq.reserved existed.
        nextSeq = max((log?.lastSeq ?? 0) + 1, reservation?.firstFree ?? 1)
        incidentCount = UInt64(recent.count)
    }

    /// Why event numbers may repeat after a restart (nil: they will not).
    var reservationProblem: String? {
        lock.lock(); defer { lock.unlock() }
        guard let r = reservation, r.failures > 0 else { return nil }
        return "event numbers not reserved (\(r.lastError ?? "unknown error")): after a restart they may repeat"
    }

    var lastSeq: UInt64 {
        lock.lock(); defer { lock.unlock() }
        return nextSeq - 1
    }

    /// Whether incidents reach the disk (nil without a log).
    var persistence: IncidentLogHealth? { log?.status() }

    /// Writes incidents held in memory after a failed append, and a reservation that
    /// failed, if any. Returns whether nothing is held any more.
    @discardableResult
    func retryPersisting() -> Bool {
        lock.lock()
        let reserved = reservation.map { $0.failures == 0 || $0.cover(nextSeq) } ?? true
        lock.unlock()
        return (log?.retry() ?? true) && reserved
    }

    /// Numbers, persists and broadcasts an event the rules decided on.
    @discardableResult
    func publish(_ d: EventDraft) -> DaemonEvent {
        publish(kind: d.kind, domid: d.domid, name: d.name, uuid: d.uuid, severity: d.severity, previous: d.previous,
                current: d.current, message: d.message)
    }

    /// Numbers, persists (incidents only) and broadcasts an event.
    @discardableResult
    func publish(kind: EventKind, domid: UInt32, name: String?, uuid: String?, severity: Severity?,
                 previous: String? = nil, current: String? = nil, message: String) -> DaemonEvent {
        lock.lock()
        reservation?.cover(nextSeq)
        let e = DaemonEvent(seq: nextSeq, time: Date(), kind: kind, domid: domid, name: name, uuid: uuid,
                            severity: severity, previous: previous, current: current, message: message)
        nextSeq += 1
        // Persist while holding the lock so the file's order is the sequence order.
        if kind.isIncident {
            log?.append(e)
            incidentCount += 1
        }
        recent.append(e)
        if recent.count > keep { recent.removeFirst(recent.count - keep) }
        let subs = Array(subscribers.values)
        lock.unlock()
        for s in subs { s.yield(e) }
        return e
    }

    /// Events after `since` still in memory, plus a live stream of new ones (nil when
    /// `follow` is false). Subscribing and reading the backlog happen under one lock, so
    /// no event falls between them.
    func subscribe(since: UInt64?, follow: Bool) -> (backlog: [DaemonEvent], live: AsyncStream<DaemonEvent>?) {
        lock.lock(); defer { lock.unlock() }
        let backlog = since.map { s in recent.filter { $0.seq > s } } ?? []
        guard follow, !finished else { return (backlog, nil) }
        let (stream, cont) = AsyncStream<DaemonEvent>.makeStream(bufferingPolicy: .bufferingNewest(1000))
        let id = nextSubscriber
        nextSubscriber += 1
        subscribers[id] = cont
        cont.onTermination = { [weak self] _ in self?.unsubscribe(id) }
        return (backlog, stream)
    }

    private func unsubscribe(_ id: UInt64) {
        lock.lock(); defer { lock.unlock() }
        subscribers[id] = nil
    }

    /// Ends every stream (shutdown), so `watch` clients see a clean end of response.
    func finishAll() {
        lock.lock()
        finished = true
        let subs = Array(subscribers.values)
        subscribers = [:]
        lock.unlock()
        for s in subs { s.finish() }
    }
}

import Foundation
import P2MConfig
import P2MEngine

/// `churn:` in a scenario: the fleet changes under the daemon as a busy host's does. After
/// every poll one step happens, at random: a guest is created (domids of the range are
/// reused, each time under a new name, so a reused domid is a new UUID), destroyed, given
/// an M2P mismatch, or has that mismatch repaired. For soak runs (scripts/soak.sh): hours
/// of domain churn must leave the daemon's memory, descriptors and threads flat.
public struct ChurnPlan: Sendable, Equatable {
    /// Domids the churn may use; none of the scenario's own domains may be among them.
    public var domids: ClosedRange<UInt32>
    /// At most this many churned guests at once.
    public var maxDomains: Int
    public var memoryMiB: UInt64

    static func parse(_ m: YAMLMap, taken: Set<DomID>) throws(ConfigError) -> ChurnPlan {
        try m.allowOnly(["first_domid", "last_domid", "max_domains", "memory_mib"])
        let first = try m.uint("first_domid", max: 0x7FEF) ?? 100
        let last = try m.uint("last_domid", max: 0x7FEF) ?? first + 15
        guard first >= 1, first <= last else { throw m.error("last_domid", "need 1 <= first_domid <= last_domid") }
        let range = UInt32(first)...UInt32(last)
        if let clash = taken.first(where: { range.contains($0) }) {
            throw m.error("first_domid", "domid \(clash) belongs to a domain of the scenario")
        }
        let maxDomains = Int(try m.uint("max_domains", max: 1000) ?? 8)
        guard maxDomains >= 1 else { throw m.error("max_domains", "must be at least 1") }
        let memory = try m.uint("memory_mib", max: 1 << 16) ?? 64
        guard memory >= 4 else { throw m.error("memory_mib", "must be at least 4") }
        return ChurnPlan(domids: range, maxDomains: maxDomains, memoryMiB: memory)
    }
}

/// What one churn step did (for the fleet's log and the tests).
public enum ChurnStep: Sendable, Equatable, CustomStringConvertible {
    case created(DomID, name: String)
    case destroyed(DomID)
    case corrupted(DomID, pfn: UInt64)
    case repaired(DomID, pfn: UInt64)

    public var description: String {
        switch self {
        case .created(let d, let n): return "created domain \(d) (\(n))"
        case .destroyed(let d): return "destroyed domain \(d)"
        case .corrupted(let d, let pfn): return "m2p mismatch injected into domain \(d) at pfn \(pfn)"
        case .repaired(let d, let pfn): return "m2p mismatch of domain \(d) at pfn \(pfn) repaired"
        }
    }
}

/// The churn's state: which churned guests live and which carry a fault.
struct ChurnState {
    var generation = 0
    var live: [DomID: String] = [:]
    var corrupted: [DomID: UInt64] = [:]

    mutating func step<R: RandomNumberGenerator>(_ plan: ChurnPlan, host: SimulatedHost, rng: inout R) throws -> ChurnStep {
        let free = plan.domids.filter { live[$0] == nil }
        var choices: [Int] = []
        if live.count < plan.maxDomains, !free.isEmpty { choices += [0, 0] }   // create
        if !live.isEmpty { choices += [1] }                                     // destroy
        if live.count > corrupted.count { choices += [2] }                      // corrupt
        if !corrupted.isEmpty { choices += [3] }                                // repair
        switch choices.randomElement(using: &rng)! {
        case 0:
            let domid = free.randomElement(using: &rng)!
            generation += 1
            let name = "churn-\(domid)-g\(generation)"
            try host.createGuest(.linux(domid: domid, name: name, memoryMiB: plan.memoryMiB))
            live[domid] = name
            return .created(domid, name: name)
        case 1:
            let domid = live.keys.randomElement(using: &rng)!
            host.destroy(domid)
            live[domid] = nil
            corrupted[domid] = nil
            return .destroyed(domid)
        case 2:
            let domid = live.keys.filter { corrupted[$0] == nil }.randomElement(using: &rng)!
            // Low RAM: below the top of memory, where the builder keeps the P2M's own pages.
            let pfn = UInt64.random(in: 16..<(plan.memoryMiB << 7), using: &rng)
            try host.inject(.m2pMismatch(pfn: pfn), into: domid)
            corrupted[domid] = pfn
            return .corrupted(domid, pfn: pfn)
        default:
            let domid = corrupted.keys.randomElement(using: &rng)!
            let pfn = corrupted[domid]!
            try host.repairM2P(domid, pfn: pfn)
            corrupted[domid] = nil
            return .repaired(domid, pfn: pfn)
        }
    }
}

extension SimulatedHost {
    /// Points the M2P entry of `pfn`'s frame back at `pfn`: the repair of an injected
    /// `m2p_mismatch`.
    public func repairM2P(_ domid: DomID, pfn: UInt64) throws(SimError) {
        lock.lock(); defer { lock.unlock() }
        guard let d = domains[domid] else { throw SimError.noSuchDomain(domid) }
        let mfn = entry(d, pfn)
        guard mfn < frameCount else { throw SimError.cannotInject("pfn \(pfn) of domain \(domid) is not populated") }
        m2p[Int(mfn)] = pfn
    }
}

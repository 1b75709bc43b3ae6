import Foundation
import P2MConfig
import P2MEngine

/// Live ballooning of a simulated guest: each `tick` moves it one step between bounds.
public struct BalloonPlan: Sendable, Equatable {
    public var minPages: UInt64
    public var maxPages: UInt64
    public var stepPages: UInt64
}

public struct DomainScenario: Sendable {
    public var spec: GuestSpec
    public var faults: [SimFault]
    public var balloon: BalloonPlan?
}

/// A simulated fleet as described by a scenario file (YAML; see config/demo-fleet.yaml).
public struct Scenario: Sendable {
    public var hostMemoryGiB: UInt64
    /// `host.zero_copy`: map calls lend pages instead of copying them (SimulatedHost.lendsFrames).
    public var zeroCopy = false
    public var domains: [DomainScenario]
    /// Faults of the host itself (listing domains, mapping the M2P).
    public var hostFaults: [HostFault] = []
    /// `churn:`: guests created, destroyed, corrupted and repaired after every poll.
    public var churn: ChurnPlan?

    public static func load(path: String) throws(ConfigError) -> Scenario {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: path, line: nil, key: nil, message: "cannot read scenario file: \(error.localizedDescription)")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(ConfigError) -> Scenario {
        let doc = try YAMLMap.parse(text, file: file)
        try doc.allowOnly(["host", "domains", "churn"])
        var memory: UInt64 = 16
        var hostFaults: [HostFault] = []
        var zeroCopy = false
        if let host = try doc.map("host") {
            try host.allowOnly(["memory_gib", "faults", "zero_copy"])
            memory = try host.uint("memory_gib", max: 1 << 20) ?? memory
            zeroCopy = try host.bool("zero_copy") ?? false
            guard memory >= 1 else { throw host.error("memory_gib", "must be at least 1") }
            for f in try host.list("faults") { hostFaults.append(try hostFault(f)) }
        }
        var out: [DomainScenario] = []
        var seen = Set<DomID>()
        let domains = try doc.list("domains")
        for d in domains {
            let s = try domain(d)
            guard seen.insert(s.spec.domid).inserted else { throw d.error("domid", "domid \(s.spec.domid) appears twice") }
            out.append(s)
        }
        var s = Scenario(hostMemoryGiB: memory, domains: out, hostFaults: hostFaults)
        s.zeroCopy = zeroCopy
        if let c = try doc.map("churn") { s.churn = try ChurnPlan.parse(c, taken: seen) }
        return s
    }

    /// errno names a host fault may use (the failures libxenctrl reports for these calls).
    static let hostFaultErrnos: [String: Int32] = ["EPERM": EPERM, "EACCES": EACCES, "EFAULT": EFAULT, "ENOMEM": ENOMEM,
                                                   "EIO": EIO, "EBUSY": EBUSY, "EINVAL": EINVAL]

    private static func hostFault(_ f: YAMLMap) throws(ConfigError) -> HostFault {
        try f.allowOnly(["kind", "errno", "after_calls", "count", "entries"])
        let kinds = HostFault.Kind.allCases.map(\.rawValue)
        guard let name = try f.string("kind", oneOf: kinds), let kind = HostFault.Kind(rawValue: name) else {
            throw f.error(nil, "a host fault needs a kind (\(kinds.joined(separator: ", ")))")
        }
        // Defaults: what a failing xc_domain_getinfolist and xc_map_m2p most often return.
        var fault = HostFault(kind: kind, errno: kind == .listDomainsFails ? EIO : kind == .m2pMapFails ? EFAULT : 0)
        if let e = try f.string("errno", oneOf: hostFaultErrnos.keys.sorted()) {
            guard kind != .m2pMapShort else { throw f.error("errno", "m2p_map_short does not fail, it maps too little") }
            fault.errno = hostFaultErrnos[e]!
        }
        fault.after = Int(try f.uint("after_calls", max: 1 << 30) ?? 0)
        if let n = try f.uint("count", max: 1 << 30) {
            guard n > 0 else { throw f.error("count", "must be at least 1 (leave it out for every later call)") }
            fault.count = Int(n)
        }
        if let n = try f.uint("entries", max: 1 << 40) {
            guard kind == .m2pMapShort else { throw f.error("entries", "only m2p_map_short takes entries") }
            fault.entries = n
        }
        return fault
    }

    static let domainKeys: Set<String> = ["domid", "name", "type", "width", "memory_mib", "maxmem_mib", "formats",
                                          "paging_levels", "identity", "faults", "balloon", "p2m_vaddr"]

    private static func domain(_ d: YAMLMap) throws(ConfigError) -> DomainScenario {
        try d.allowOnly(domainKeys)
        guard let domid = try d.uint("domid", max: 0x7FEF) else { throw d.error(nil, "a domain needs a domid") }
        guard domid != 0 else { throw d.error("domid", "domid 0 is dom0 and cannot be simulated as a guest") }
        let name = try d.string("name") ?? "domain-\(domid)"
        let type = DomainType(rawValue: try d.string("type", oneOf: ["pv", "hvm", "pvh"]) ?? "pv")!
        let widthBits = try d.uint("width") ?? 64
        guard widthBits == 32 || widthBits == 64 else { throw d.error("width", "must be 32 or 64") }
        let width: GuestWidth = widthBits == 32 ? .bits32 : .bits64
        guard let memory = try d.uint("memory_mib", max: 1 << 24) else { throw d.error(nil, "a domain needs memory_mib") }
        let maxmem = try d.uint("maxmem_mib", max: 1 << 24) ?? memory
        guard maxmem >= memory else { throw d.error("maxmem_mib", "must be at least memory_mib (\(memory))") }
        let formats = PublishedFormats(rawValue: try d.string("formats", oneOf: ["both", "list_only", "tree_only"]) ?? "both")!
        let levels = Int(try d.uint("paging_levels") ?? 4)
        guard levels == 4 || levels == 5 else { throw d.error("paging_levels", "must be 4 or 5") }
        if width == .bits32 && d.has("paging_levels") { throw d.error("paging_levels", "32-bit PAE guests always use 3 levels") }

        var spec = GuestSpec.linux(domid: DomID(domid), name: name, memoryMiB: memory, maxMiB: maxmem, width: width, formats: formats)
        spec.type = type
        spec.pagingLevels = levels
        spec.p2mVaddr = try d.uint("p2m_vaddr")
        if let v = spec.p2mVaddr, v & ((1 << 21) - 1) != 0 { throw d.error("p2m_vaddr", "must be 2 MiB aligned, as Linux's P2M area is") }
        for r in try d.list("identity") {
            try r.allowOnly(["start_pfn", "count"])
            guard let start = try r.uint("start_pfn"), let count = try r.uint("count") else {
                throw r.error(nil, "identity ranges need start_pfn and count")
            }
            guard start + count <= spec.maxPfn else { throw r.error("count", "range ends beyond the guest's P2M (\(spec.maxPfn) pfns)") }
            spec.identity.append(start..<(start + count))
            spec.populated = spec.populated.flatMap { p -> [Range<UInt64>] in
                // Identity ranges are holes in RAM: never populate them.
                var parts: [Range<UInt64>] = []
                if p.lowerBound < start { parts.append(p.lowerBound..<min(p.upperBound, start)) }
                if p.upperBound > start + count { parts.append(max(p.lowerBound, start + count)..<p.upperBound) }
                return parts.filter { !$0.isEmpty }
            }
        }
        var faults: [SimFault] = []
        for f in try d.list("faults") { faults.append(try fault(f)) }
        var plan: BalloonPlan?
        if let b = try d.map("balloon") {
            try b.allowOnly(["min_mib", "max_mib", "step_mib"])
            let lo = try b.uint("min_mib") ?? memory / 2
            let hi = try b.uint("max_mib") ?? maxmem
            let step = try b.uint("step_mib") ?? max(1, (hi - min(lo, hi)) / 4)
            guard lo <= hi, hi <= maxmem, step > 0 else { throw b.error(nil, "need 0 < step_mib and min_mib <= max_mib <= maxmem_mib") }
            plan = BalloonPlan(minPages: lo << 8, maxPages: hi << 8, stepPages: step << 8)
        }
        return DomainScenario(spec: spec, faults: faults, balloon: plan)
    }

    static let faultKinds = ["m2p_mismatch", "duplicate_mfn", "mfn_out_of_range", "identity_mismatch", "frame_unmappable",
                             "tree_list_mismatch", "structure_mfn_invalid", "pte_frame_invalid", "structure_unmappable",
                             "shared_frame_misuse", "structure_cycle", "pte_not_present", "large_page_mapping",
                             "list_vaddr_invalid", "max_pfn_implausible", "p2m_not_published", "p2m_unstable",
                             "populated_mismatch", "max_pfn_nr_gpfns_mismatch", "vanish_after_map_calls", "all_maps_fail"]

    private static func fault(_ f: YAMLMap) throws(ConfigError) -> SimFault {
        try f.allowOnly(["kind", "pfn", "same_as", "leaf", "index", "chunk", "value", "count"])
        guard let kind = try f.string("kind", oneOf: faultKinds) else { throw f.error(nil, "a fault needs a kind") }
        let pfn = try f.uint("pfn") ?? 7
        let leaf = Int(try f.uint("leaf", max: 1 << 40) ?? 1)
        switch kind {
        case "m2p_mismatch": return .m2pMismatch(pfn: pfn)
        case "duplicate_mfn": return .duplicateMfn(pfn: pfn, sameAs: try f.uint("same_as") ?? (pfn > 0 ? pfn - 1 : 0))
        case "mfn_out_of_range": return .mfnOutOfRange(pfn: pfn)
        case "identity_mismatch": return .identityMismatch(pfn: pfn)
        case "frame_unmappable": return .unmappableDataFrame(pfn: pfn)
        case "tree_list_mismatch": return .treeListMismatch(pfn: pfn)
        case "structure_mfn_invalid": return .zeroFllEntry(index: Int(try f.uint("index", max: 1023) ?? 0))
        case "pte_frame_invalid": return .badPteFrame(leaf: leaf)
        case "structure_unmappable": return .unmappableLeaf(leaf: leaf)
        case "shared_frame_misuse": return .sharedLeaf(leaf: leaf, sameAs: Int(try f.uint("same_as", max: 1 << 40) ?? 0))
        case "structure_cycle": return .pageTableCycle(leaf: leaf)
        case "pte_not_present": return .pteNotPresent(leaf: leaf)
        case "large_page_mapping": return .largePage(chunk: Int(try f.uint("chunk", max: 1 << 30) ?? 0))
        case "list_vaddr_invalid": return .listVaddr(try f.uint("value") ?? 0x0000_9000_0000_0000)
        case "max_pfn_implausible": return .publishedMaxPfn(try f.uint("value") ?? (1 << 52))
        case "p2m_not_published": return .unpublished
        case "p2m_unstable": return .generationAlwaysMoving
        case "populated_mismatch": return .extraOwnedPages(try f.uint("count") ?? 3)
        case "max_pfn_nr_gpfns_mismatch": return .nrGpfns(try f.uint("value") ?? 1)
        case "vanish_after_map_calls": return .vanishAfterMapCalls(Int(try f.uint("count", max: 1 << 30) ?? 2))
        default: return .allMapsFail
        }
    }
}

/// A simulated host populated from a scenario, with its live ballooning.
public final class SimulatedFleet: @unchecked Sendable {
    public let host: SimulatedHost
    public let scenario: Scenario
    private let lock = NSLock()
    private var direction: [DomID: Bool] = [:] // true = growing
    private var churn = ChurnState()
    /// The churn's steps so far, newest last (at most 100 kept).
    public private(set) var churnLog: [ChurnStep] = []

    public init(_ scenario: Scenario) throws {
        self.scenario = scenario
        host = SimulatedHost(memoryGiB: scenario.hostMemoryGiB, zeroCopy: scenario.zeroCopy)
        host.setHostFaults(scenario.hostFaults)
        for d in scenario.domains {
            try host.createGuest(d.spec)
            for f in d.faults {
                do {
                    try host.inject(f, into: d.spec.domid)
                } catch {
                    throw SimError.cannotInject("domain \(d.spec.domid) (\(d.spec.name)): \(error)")
                }
            }
        }
    }

    /// The built-in demo fleet (same text as config/demo-fleet.yaml).
    public static func demo() throws -> SimulatedFleet {
        try SimulatedFleet(Scenario.parse(DemoFleet.yaml, file: "<built-in demo fleet>"))
    }

    /// One step of every balloon plan, and of the churn. Returns the domains that changed.
    @discardableResult
    public func tick() throws -> [DomID] {
        lock.lock(); defer { lock.unlock() }
        var changed: [DomID] = []
        if let plan = scenario.churn {
            var rng = SystemRandomNumberGenerator()
            let step = try churn.step(plan, host: host, rng: &rng)
            churnLog.append(step)
            if churnLog.count > 100 { churnLog.removeFirst(churnLog.count - 100) }
            switch step {
            case .created(let d, _), .destroyed(let d), .corrupted(let d, _), .repaired(let d, _): changed.append(d)
            }
        }
        for d in scenario.domains {
            guard let plan = d.balloon, let now = host.populatedPages(d.spec.domid) else { continue }
            var up = direction[d.spec.domid] ?? (now < plan.maxPages)
            if up && now >= plan.maxPages { up = false }
            if !up && now <= plan.minPages { up = true }
            direction[d.spec.domid] = up
            let target = up ? min(plan.maxPages, now + plan.stepPages) : max(plan.minPages, now - min(now, plan.stepPages))
            if target != now {
                try host.balloon(d.spec.domid, toPages: target)
                changed.append(d.spec.domid)
            }
        }
        return changed
    }
}

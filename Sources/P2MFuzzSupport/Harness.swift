import Foundation
import P2MDumpCore
import P2MEngine
import P2MSimulator

/// Runs one fuzz input through the real scanner and returns every invariant it broke
/// (empty = fine). The libFuzzer entry point traps on a non-empty result; the regression
/// tests replay saved inputs through this same function.
///
/// Byte 0 picks the mode: even = a raw guest where every word is input (`RawGuestHost`),
/// odd = a correct simulated guest plus one fault or word corruption (`SimCase`).
public enum FuzzHarness {
    public struct Outcome {
        public var violations: [String] = []
        public var reports: [P2MReport] = []
        public var meters: [FrameMeter] = []
    }

    public static func run(_ bytes: [UInt8]) -> [String] { execute(bytes).violations }

    public static func execute(_ bytes: [UInt8]) -> Outcome {
        var out = Outcome()
        if bytes.starts(with: [0x7f, 0x45, 0x4c, 0x46]) {
            runCore(bytes, &out)
        } else if bytes.first.map({ $0 & 1 == 1 }) ?? false {
            runSim(bytes, &out)
        } else {
            runRaw(bytes, &out)
        }
        return out
    }

    // MARK: Dump-core mode

    /// Inputs that start with the ELF magic are dump-core files: the reader must turn
    /// every malformed one into a `CoreDumpError` with a message, never a trap, and a
    /// file it accepts goes through the engine like a live guest.
    static func runCore(_ bytes: [UInt8], _ out: inout Outcome) {
        let path = NSTemporaryDirectory() + "p2mfuzz-\(getpid()).core"
        guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
            out.violations.append("cannot write the scratch core file \(path)")
            return
        }
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            let r = try checkCore(path: path)
            out.reports.append(r)
            if r.backend != "core" { out.violations.append("core report from backend \(r.backend)") }
            if r.severity == .error && (r.error ?? "").isEmpty { out.violations.append("core scan error without a message") }
        } catch {
            if "\(error)".isEmpty { out.violations.append("CoreDumpError without a message") }
        }
    }

    // MARK: Raw mode

    static func runRaw(_ bytes: [UInt8], _ out: inout Outcome) {
        let h = RawGuestHost(decoding: bytes)
        let r = P2MScanner(host: h, options: h.options).scan(RawGuestHost.domid)
        out.reports.append(r)
        out.meters.append(h.meter)
        var v: [String] = []
        checkReport(r, options: h.options, meter: h.meter, &v)
        let maxPfnSeen = h.states.map(\.maxPfn).max() ?? 0
        checkBudget(meter: h.meter, options: h.options, width: h.width, maxPfn: maxPfnSeen,
                    hypervisorPages: max(h.maxPages, h.totPages, h.totPagesAfter, h.maxMFNValue + 1), &v)

        // Layouts this decoder knows to be broken, whatever the engine's internals: the
        // scan must not call them healthy. Conditions hold in every shared-info state,
        // so they hold in whichever states the scan happened to read.
        guard h.type == .pv, r.error == nil else {
            out.violations = v
            return
        }
        func badRoot(_ m: UInt64) -> Bool {
            m == 0 || m > h.maxMFNValue || h.refused.contains(m) || (h.pages[m] == nil && h.unknownFramesRefuse)
        }
        let all = h.states
        if all.allSatisfy({ !published($0).tree && !published($0).list }), r.count(.p2mNotPublished) == 0 {
            v.append("nothing published, but no p2m_not_published")
        }
        if all.allSatisfy({ $0.p2mGeneration & 1 == 1 }), r.count(.p2mUnstable) == 0 {
            v.append("generation odd on every read, but no p2m_unstable")
        }
        if all.allSatisfy({ $0.maxPfn >= 1 << 40 }), r.count(.maxPfnImplausible) == 0 {
            v.append("max_pfn >= 2^40 on a host of \(h.maxMFNValue + 1) frames, but no max_pfn_implausible")
        }
        let rootsBad = all.allSatisfy { s in
            let p = published(s)
            return (p.tree && badRoot(s.frameListList)) || (p.list && badRoot(CR3.mfn(s.p2mCr3, width: h.width)))
        }
        if rootsBad, r.severity == .ok {
            v.append("a published root frame is zero, beyond the host or unmappable, but severity ok")
        }
        out.violations = v
    }

    static func published(_ s: ArchSharedInfo) -> (tree: Bool, list: Bool) {
        (s.frameListList != 0 && s.frameListList != .max, s.p2mCr3 != 0)
    }

    // MARK: Simulator mode

    static func runSim(_ bytes: [UInt8], _ out: inout Outcome) {
        var c = SimCase(decoding: bytes)
        let sim = SimulatedHost(frames: c.hostFrames)
        do {
            try sim.createGuest(c.spec)
        } catch {
            // The builder rejected the spec (e.g. a 32-bit guest above 4 TiB): no guest, nothing to check.
            return
        }
        var v: [String] = []
        let hv = max(c.spec.maxPfn, c.hostFrames) + 512
        let first = OverlayHost(sim)
        let clean = P2MScanner(host: first, options: c.options).scan(SimCase.domid)
        out.reports.append(clean)
        out.meters.append(first.meter)
        checkReport(clean, options: c.options, meter: first.meter, &v)
        checkBudget(meter: first.meter, options: c.options, width: c.spec.width, maxPfn: c.spec.maxPfn, hypervisorPages: hv, &v)
        // A guest whose RAM could not hold its own P2M has P2M pages outside its
        // pseudo-physical map: that, and only that, may be reported for it.
        let outside = sim.structureFramesOutsideP2M(SimCase.domid) > 0
        let unexpected = clean.findings.filter { !(outside && $0.kind == .p2mFrameOutsidePhysmap) }
        if !unexpected.isEmpty || (clean.severity != .ok && !outside) {
            v.append("valid layout yielded severity \(clean.severity.rawValue), findings \(clean.findings.map { "\($0.kind.rawValue)=\($0.count)" })")
        }

        var options = c.options
        let second = OverlayHost(sim)
        var expectation: (SimFault, Bool)?
        switch c.action {
        case 1:
            let (fault, insist) = c.fault()
            if case .unmappableDataFrame = fault { options.probeDataFrames = true }
            do { try sim.inject(fault, into: SimCase.domid) } catch {
                out.violations = v
                return
            }
            expectation = (fault, insist)
        case 2:
            for (mfn, off, value) in c.patches(seen: first.seen, maxMFN: c.hostFrames - 1) {
                second.patches[mfn, default: []].append((off, value))
            }
        default:
            out.violations = v
            return
        }
        let r = P2MScanner(host: second, options: options).scan(SimCase.domid)
        out.reports.append(r)
        out.meters.append(second.meter)
        checkReport(r, options: options, meter: second.meter, &v)
        var maxPfn = c.spec.maxPfn
        if case .publishedMaxPfn(let m)? = expectation?.0 { maxPfn = m }
        checkBudget(meter: second.meter, options: options, width: c.spec.width, maxPfn: maxPfn, hypervisorPages: hv + 256, &v)
        if let (fault, insist) = expectation, insist {
            if let k = fault.expectedFinding {
                if r.count(k) == 0 {
                    v.append("fault \(fault) injected, but no \(k.rawValue): severity \(r.severity.rawValue), findings \(r.findings.map(\.kind.rawValue)), error \(r.error ?? "-")")
                }
            } else if r.severity != .error {
                v.append("fault \(fault) injected, but severity \(r.severity.rawValue)")
            }
        }
        out.violations = v
    }

    // MARK: Invariants

    /// Work a scan may do: linear in the P2M size after clamping the guest's max_pfn by
    /// hypervisor numbers (with slack over the engine's own clamp, so this checks the
    /// clamp exists, not its exact formula), times the attempts generation retries allow.
    static func checkBudget(meter m: FrameMeter, options o: ScanOptions, width: GuestWidth, maxPfn: UInt64,
                            hypervisorPages hv: UInt64, _ v: inout [String]) {
        let fpp = UInt64(width.fpp)
        let cap = min(maxPfn, hv &* 4 &+ (1 << 21))
        let leaves = cap / fpp + 2
        let perAttempt = 6 &* leaves &+ 64 &+ (o.probeDataFrames ? leaves &* fpp : 0)
        let attempts = UInt64(o.generationRetries + 1)
        let budget = attempts &* perAttempt
        if UInt64(m.framesMapped) > budget {
            v.append("mapped \(m.framesMapped) frames, budget \(budget) (max_pfn \(maxPfn), host pages \(hv), \(attempts) attempts)")
        }
        if m.mapCalls > m.framesMapped || m.emptyMapCalls > 0 {
            v.append("\(m.mapCalls) map calls for \(m.framesMapped) frames (\(m.emptyMapCalls) empty)")
        }
        // One structure chunk (the walker maps a level up to 4096 frames per call) or leaf
        // batch, plus one batch being probed or compared, may be alive at once.
        if m.peakLiveFrames > max(4096, o.batchFrames) + o.batchFrames + 2 {
            v.append("\(m.peakLiveFrames) frames mapped at once with batch \(o.batchFrames)")
        }
        if m.sharedInfoReads > 2 * (o.generationRetries + 1) {
            v.append("\(m.sharedInfoReads) shared-info reads with \(o.generationRetries) retries")
        }
        if m.liveFrames != 0 {
            v.append("\(m.liveFrames) frames still mapped after the scan")
        }
    }

    /// Report-level contract: typed, self-consistent, every anomaly a finding.
    static func checkReport(_ r: P2MReport, options o: ScanOptions, meter: FrameMeter, _ v: inout [String]) {
        if (r.severity == .error) != (r.error != nil) {
            v.append("severity \(r.severity.rawValue) with error \(r.error ?? "nil")")
        }
        do {
            _ = try P2MReport.encoder(pretty: false).encode(r)
        } catch {
            v.append("report does not encode: \(error)")
        }
        if meter.failedMapCalls > 0 && r.severity != .error {
            v.append("\(meter.failedMapCalls) map calls failed (domain gone), yet severity \(r.severity.rawValue)")
        }
        guard r.error == nil else { return }
        if r.domainType != .pv {
            if r.severity != .notApplicable { v.append("\(r.domainType.rawValue) guest with severity \(r.severity.rawValue)") }
            if meter.mapCalls != 0 { v.append("\(r.domainType.rawValue) guest but \(meter.mapCalls) map calls") }
            return
        }
        let worst = r.findings.map(\.severity).max() ?? .ok
        if r.severity != worst { v.append("severity \(r.severity.rawValue), worst finding \(worst.rawValue)") }
        var kinds = Set<FindingKind>()
        for f in r.findings {
            if !kinds.insert(f.kind).inserted { v.append("finding \(f.kind.rawValue) listed twice") }
            if f.count == 0 { v.append("finding \(f.kind.rawValue) with count 0") }
            if f.severity != f.kind.severity { v.append("finding \(f.kind.rawValue) with severity \(f.severity.rawValue)") }
            if f.samples.count > o.sampleLimit || UInt64(f.samples.count) > f.count {
                v.append("finding \(f.kind.rawValue): \(f.samples.count) samples for count \(f.count), limit \(o.sampleLimit)")
            }
        }
        let critical = r.findings.contains { $0.severity == .critical }
        if critical != (r.migration.verdict == .broken) {
            v.append("critical findings \(critical) but migration verdict \(r.migration.verdict.rawValue)")
        }
        let e = r.entries
        if let m = r.maxPfn {
            let (sum, o1) = e.valid.addingReportingOverflow(e.invalid)
            let (sum2, o2) = sum.addingReportingOverflow(e.identity &+ e.foreign &+ e.faulty)
            if o1 || o2 || sum2 != m.effective {
                v.append("entries \(e) do not add up to effective max_pfn \(m.effective)")
            }
            if m.effective > m.published { v.append("effective max_pfn \(m.effective) above published \(m.published)") }
            if r.populated > m.effective { v.append("populated \(r.populated) above effective max_pfn \(m.effective)") }
        }
        if e.valid > r.populated { v.append("\(e.valid) valid entries but populated \(r.populated)") }
        if e.faulty > 0 && !critical {
            v.append("\(e.faulty) faulty entries without a critical finding: \(r.findings.map(\.kind.rawValue))")
        }
        if let map = r.pfnMap {
            let bad = map.masks.contains { $0 & (PfnMap.Bit.faulty | PfnMap.Bit.unreadable) != 0 }
            if bad && !critical { v.append("pfn map marks faulty/unreadable cells without a critical finding") }
            if map.masks.count > o.mapCells + 1 { v.append("pfn map has \(map.masks.count) cells for \(o.mapCells)") }
        }
        if r.stats.framesMapped > UInt64(meter.framesMapped) {
            v.append("report claims \(r.stats.framesMapped) frames mapped, host saw \(meter.framesMapped)")
        }
        checkToolstack(r, options: o, &v)
    }
}

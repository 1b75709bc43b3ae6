import Foundation

public struct ScanOptions: Sendable, Equatable {
    /// Frames per foreign-map call for leaves and structure levels.
    public var batchFrames: Int = 256
    /// Extra walks when p2m_generation is odd or moves during a walk.
    public var generationRetries: Int = 3
    /// Samples kept per finding kind.
    public var sampleLimit: Int = 16
    /// Also map every populated frame to prove the domain can map it (costly: one map
    /// per data frame, in batches). Off for routine polls.
    public var probeDataFrames: Bool = false
    /// Page-table levels of 64-bit guests (5 for LA57 guests).
    public var pagingLevels64: Int = 4
    /// Cells in the report's pfn map.
    public var mapCells: Int = 1024
    /// Incremental verification (LeafMemo.swift): 1 checks every entry in every scan; N > 1
    /// checks per entry only the leaves that changed, had findings or are due, so that
    /// every entry is verified against the M2P at least once every N scans of a domain.
    /// Every leaf is still read in every scan. Ignored when probing data frames.
    public var verifyPeriodScans: Int = 1
    /// Predict what libxenguest's save/migrate/dump-core will do (the report's `toolstack`).
    public var predictToolstack: Bool = true

    public init() {}
}

/// Walks and checks one domain's P2M over any host and produces a report.
public final class P2MScanner: @unchecked Sendable {
    public let host: any P2MHost
    public let options: ScanOptions
    /// Duplicate-detection bitmaps reused between scans by this scanner (one per
    /// concurrent scan); see MFNBitmapPool.relax for giving their memory back.
    public let bitmaps = MFNBitmapPool()
    /// What incremental scans remember per domain, and the key of their fingerprints.
    let memos = LeafMemoStore()
    let fingerprint = LeafFingerprint()

    /// 2^30 pfns = 4 TiB of pseudo-physical space.
    public static let pfnSpaceAlwaysAllowed: UInt64 = 1 << 30

    /// The pfns a domain could own: twice what Xen counts for it (or the host's frames),
    /// plus 4 GiB of slack. Bounds a guest's max_pfn beyond the fixed allowance above.
    static func domainPfnBound(_ info: DomainInfo, maxMFN: UInt64) -> UInt64 {
        max(info.maxPages, info.totPages, maxMFN &+ 1).multipliedReportingOverflow(by: 2).partialValue &+ (1 << 20)
    }

    public init(host: any P2MHost, options: ScanOptions = ScanOptions()) {
        self.host = host
        self.options = options
    }

    /// Scans one domain. Never throws: host failures become a report with severity `error`.
    /// - Parameter verifyAll: check every entry even in incremental mode (an operator's
    ///   explicit request), refreshing what later incremental scans rely on.
    public func scan(_ domid: DomID, verifyAll: Bool = false) -> P2MReport {
        let clock = ContinuousClock()
        let start = clock.now
        var report: P2MReport
        do {
            let info = try host.domainInfo(domid)
            report = try scan(info: info, verifyAll: verifyAll)
        } catch {
            if error.isDomainGone { memos.forget(domid) }
            report = errorReport(domid: domid, info: nil, error: error)
        }
        report.stats.durationMs = Self.ms(clock.now - start)
        return report
    }

    static func ms(_ d: Duration) -> Double {
        let c = d.components
        return Double(c.seconds) * 1000 + Double(c.attoseconds) / 1e15
    }

    private func baseReport(_ info: DomainInfo, severity: Severity, verdict: MigrationReadiness) -> P2MReport {
        P2MReport(domid: info.domid, name: host.domainName(info.domid), uuid: info.uuidString, backend: host.backendName,
                  domainType: info.type, guestWidthBits: nil, severity: severity, error: nil, primaryFormat: nil,
                  tree: nil, linearList: nil, maxPfn: nil, totPages: info.totPages, maxPages: info.maxPages,
                  populated: 0, entries: EntryCounts(), generation: nil, findings: [], migration: verdict,
                  stats: ScanStats(), pfnMap: nil, scannedAt: Date())
    }

    private func errorReport(domid: DomID, info: DomainInfo?, error: Error) -> P2MReport {
        var message = "\(error)"
        if let h = error as? HostError, h.isDomainGone {
            message = "domain \(domid) \(HostError.vanishedDuringScan) (\(h))"
        }
        let i = info ?? DomainInfo(domid: domid, type: .pv, totPages: 0, maxPages: 0, sharedInfoFrame: 0, uuid: [])
        var r = baseReport(i, severity: .error, verdict: MigrationReadiness(verdict: .unknown, reason: "scan failed: \(message)"))
        r.error = message
        return r
    }

    /// Drops what incremental scans remember of domains not in `domids` (gone ones).
    public func retainMemory(of domids: Set<DomID>) { memos.retain(domids) }

    private func scan(info: DomainInfo, verifyAll: Bool) throws(HostError) -> P2MReport {
        guard !info.isCaller else {
            return baseReport(info, severity: .notApplicable, verdict: MigrationReadiness(
                verdict: .notApplicable,
                reason: "domain \(info.domid) is the domain this check runs in: Xen refuses foreign mappings of the calling domain, so its own P2M cannot be read (nor is it ever saved or migrated)"))
        }
        guard info.type == .pv else {
            return baseReport(info, severity: .notApplicable, verdict: MigrationReadiness(
                verdict: .notApplicable,
                reason: "\(info.type.rawValue.uppercased()) guest: Xen keeps its p2m, the guest has none to check"))
        }
        let width = try host.guestWidth(info.domid)
        let maxMFN = try host.maxMFN()
        let nrGpfns = try? host.nrGpfns(info.domid)
        let m2p = try host.mapM2P(maxMFN: maxMFN)
        // A table shorter than the host would turn every frame above its end into a
        // bogus mfn_out_of_range: the scan cannot be trusted, so it is an error instead.
        guard UInt64(m2p.entries.count) > maxMFN else {
            throw HostError.inconsistent(operation: "map the M2P table up to MFN \(hex(maxMFN))",
                                         detail: "the mapping has \(m2p.entries.count) entries, not \(maxMFN &+ 1)")
        }

        // Incremental mode: this scan's share of re-verification and the memo it updates
        // (put back only when the scan completes).
        var pass: IncrementalPass?
        if options.verifyPeriodScans > 1 && !options.probeDataFrames {
            var memo = memos.take(info.domid)
            if memo?.fits(uuid: info.uuid, width: width, maxMFN: maxMFN) != true {
                memo = LeafMemo(uuid: info.uuid, width: width, maxMFN: maxMFN)
            }
            pass = IncrementalPass(memo: memo!, fingerprint: fingerprint, period: verifyAll ? 1 : options.verifyPeriodScans)
        }

        var attempt: Attempt
        var retries = 0
        var unstable = false
        while true {
            let before = try readSharedInfo(info, width)
            if before.p2mGeneration & 1 == 1 {
                // A change is in progress: walking now is guaranteed to be torn.
                if retries < options.generationRetries {
                    retries += 1
                    continue
                }
                unstable = true
            }
            attempt = try walkAndCheck(info: info, width: width, maxMFN: maxMFN, nrGpfns: nrGpfns, m2p: m2p, si: before, pass: pass)
            let after = try readSharedInfo(info, width)
            attempt.generation = GenerationInfo(before: before.p2mGeneration, after: after.p2mGeneration)
            let moved = after.p2mGeneration != before.p2mGeneration || !after.sameLayout(as: before) || after.p2mGeneration & 1 == 1
            if !moved && !unstable { break }
            if retries >= options.generationRetries {
                unstable = true
                break
            }
            retries += 1
        }
        if unstable {
            attempt.findings.add(.p2mUnstable, FindingSample(
                expected: attempt.generation?.before, found: attempt.generation?.after,
                note: "generation odd or moving after \(retries) retries"))
        }

        // tot_pages moves while a guest balloons; compare only when it held still.
        let infoAfter = try host.domainInfo(info.domid)
        if attempt.populatedKnown && infoAfter.totPages == info.totPages && attempt.populated != info.totPages {
            attempt.findings.add(.populatedMismatch, FindingSample(expected: info.totPages, found: attempt.populated))
        }

        let toolstack = options.predictToolstack
            ? try predictToolstack(attempt, info: info, width: width, maxMFN: maxMFN, m2p: m2p, nrGpfns: nrGpfns, unstable: unstable) : nil

        var r = baseReport(info, severity: .ok, verdict: MigrationReadiness(verdict: .unknown, reason: ""))
        r.toolstack = toolstack
        r.guestWidthBits = width.bits
        r.primaryFormat = attempt.primary
        r.tree = attempt.tree
        r.linearList = attempt.list
        r.maxPfn = attempt.maxPfn
        r.populated = attempt.populated
        r.entries = attempt.counts
        r.generation = attempt.generation
        r.findings = attempt.findings.findings
        r.pfnMap = attempt.pfnMap
        r.stats = attempt.session.stats
        r.stats.retries = retries
        if let pass {
            r.stats.leavesReused = pass.reused
            memos.put(info.domid, pass.memo)
        }
        r.severity = r.findings.map(\.severity).max() ?? .ok
        r.migration = migration(r, attempt)
        return r
    }

    private func readSharedInfo(_ info: DomainInfo, _ width: GuestWidth) throws(HostError) -> ArchSharedInfo {
        try ArchSharedInfo.read(from: host, info, width)
    }

    private func migration(_ r: P2MReport, _ a: Attempt) -> MigrationReadiness {
        let critical = r.findings.filter { $0.severity == .critical }.map(\.kind.rawValue)
        if !critical.isEmpty {
            return MigrationReadiness(verdict: .broken, reason: "P2M inconsistent (\(critical.joined(separator: ", "))): save, migration and dumps will fail or copy wrong frames")
        }
        let treeTooSmall = r.count(.treeCapacityExceeded) > 0
        if a.tree?.walked == true && !treeTooSmall {
            return MigrationReadiness(verdict: .legacyOk, reason: "3-level tree published and consistent: any toolstack, including pre-migration-v2, can save or migrate this guest")
        }
        if treeTooSmall && a.list?.walked == true {
            return MigrationReadiness(verdict: .needsMigrationV2, reason: "P2M larger than the 3-level tree can describe (512 GiB for 64-bit guests): legacy tools fail with \"max_pfn too large for p2m tree\"; migration-v2 tools (Xen >= 4.6) read the linear list")
        }
        if a.fllIsInvalid && a.list?.walked == true {
            return MigrationReadiness(verdict: .needsMigrationV2, reason: "linear list only (fll=~0): needs migration-v2 tools (Xen >= 4.6); legacy tools fail with \"Couldn't map p2m_frame_list_list\"")
        }
        if a.list?.walked == true {
            return MigrationReadiness(verdict: .needsMigrationV2, reason: "only the linear list is usable (tree not set up yet): needs migration-v2 tools")
        }
        return MigrationReadiness(verdict: .notReady, reason: "guest has not published a usable P2M yet")
    }

    // MARK: - One walk

    final class Attempt {
        var findings: FindingCollector
        let session: HostSession
        var tree: FormatInfo?
        var list: FormatInfo?
        var primary: P2MFormat?
        var maxPfn: MaxPfnInfo?
        var counts = EntryCounts()
        var populated: UInt64 = 0
        var populatedKnown = true
        var generation: GenerationInfo?
        var pfnMap: PfnMap?
        var fllIsInvalid = false
        let pass: IncrementalPass?
        var shared: ArchSharedInfo?
        /// max_pfn after the plausibility clamp: bounds the toolstack model's walks too.
        var walkMaxPfn: UInt64 = 0
        /// The pfns the domain could own (`byDomain`): bounds the toolstack model's map checks.
        var domainPfnBound: UInt64 = 0
        /// Leaf frames of the walk the entries were checked through.
        var primaryLeaves: [UInt64] = []

        init(findings: FindingCollector, session: HostSession, pass: IncrementalPass?) {
            self.findings = findings
            self.session = session
            self.pass = pass
        }
    }

    private func walkAndCheck(info: DomainInfo, width: GuestWidth, maxMFN: UInt64, nrGpfns: UInt64?, m2p: M2PMapping,
                              si: ArchSharedInfo, pass: IncrementalPass?) throws(HostError) -> Attempt {
        let a = Attempt(findings: FindingCollector(sampleLimit: options.sampleLimit),
                        session: HostSession(host: host, domid: info.domid, batchFrames: options.batchFrames), pass: pass)
        let fpp = UInt64(width.fpp)
        a.shared = si

        // Bound the guest's max_pfn before it sizes anything. Xen's max_pages is not the
        // guest's maxmem (a ballooning guest's max_pages is its memory plus slack while
        // its P2M is sized for maxmem), so a fixed 4 TiB of pfns is always allowed: that
        // caps the leaf list at 16 MiB and the walk at what the structure holds.
        let byDomain = Self.domainPfnBound(info, maxMFN: maxMFN)
        let plausible = max(byDomain, Self.pfnSpaceAlwaysAllowed)
        var maxPfn = si.maxPfn
        if maxPfn > plausible {
            // Hostile or corrupt: walk only what the domain could own.
            a.findings.add(.maxPfnImplausible, FindingSample(expected: plausible, found: maxPfn, note: "walk clamped to \(byDomain) pfns"))
            maxPfn = byDomain
        }
        if let n = nrGpfns, si.maxPfn != 0, n != si.maxPfn {
            a.findings.add(.maxPfnNrGpfnsMismatch, FindingSample(expected: n, found: si.maxPfn))
        }
        a.walkMaxPfn = maxPfn
        a.domainPfnBound = byDomain
        let leafCount = Int((maxPfn &+ fpp &- 1) / fpp)

        let treePublished = si.frameListList != 0 && si.frameListList != UInt64.max
        a.fllIsInvalid = si.frameListList == UInt64.max
        let listPublished = si.p2mCr3 != 0
        if !treePublished && !listPublished {
            a.findings.add(.p2mNotPublished, FindingSample(note: a.fllIsInvalid ? "fll=~0 announces a linear list, but p2m_cr3 is 0" : "fll=0 and p2m_cr3=0"))
            a.maxPfn = MaxPfnInfo(published: si.maxPfn, effective: 0, nrGpfns: nrGpfns)
            a.populatedKnown = false
            return a
        }

        var treeWalk: WalkResult?
        if treePublished {
            let shape = RadixShape.mfnTree(levels: 3, width: width)
            let capacity = fpp &* fpp &* fpp
            var treeLeaves = leafCount
            if maxPfn > capacity {
                a.findings.add(.treeCapacityExceeded, FindingSample(expected: capacity, found: maxPfn, format: .tree))
                treeLeaves = Int(capacity / fpp)
            }
            let walker = RadixWalker(shape: shape, format: .tree, maxMFN: maxMFN, session: a.session)
            let w = try walker.walk(root: si.frameListList, vpnStart: 0, leafCount: treeLeaves, trim: true, findings: &a.findings)
            treeWalk = w
            a.tree = FormatInfo(published: true, walked: w.clean, levels: 3, root: si.frameListList, vaddr: nil,
                                leafFrames: UInt64(w.leaves.count), capacityPfns: capacity)
        }

        var listWalk: WalkResult?
        if listPublished {
            let levels = width == .bits64 ? options.pagingLevels64 : 3
            let shape = width == .bits64 ? RadixShape.pageTables(levels: levels) : RadixShape.pae
            let root = CR3.mfn(si.p2mCr3, width: width)
            if let problem = listRangeProblem(vaddr: si.p2mVaddr, leaves: leafCount, width: width, levels: levels) {
                a.findings.add(.listVaddrInvalid, FindingSample(found: si.p2mVaddr, format: .linearList, note: problem))
                a.list = FormatInfo(published: true, walked: false, levels: levels, root: root, vaddr: si.p2mVaddr, leafFrames: 0, capacityPfns: nil)
            } else {
                let vpnStart = (si.p2mVaddr & ((1 << UInt64(shape.vaBits)) - 1)) >> pageShift
                let walker = RadixWalker(shape: shape, format: .linearList, maxMFN: maxMFN, session: a.session)
                let w = try walker.walk(root: root, vpnStart: vpnStart, leafCount: leafCount, trim: true, findings: &a.findings)
                listWalk = w
                a.list = FormatInfo(published: true, walked: w.clean, levels: levels, root: root, vaddr: si.p2mVaddr,
                                    leafFrames: UInt64(w.leaves.count), capacityPfns: nil)
            }
        }

        // The list is what current tools read; the tree is the fallback.
        let primaryWalk: WalkResult
        if let l = listWalk, l.clean || treeWalk?.clean != true {
            primaryWalk = l
            a.primary = .linearList
        } else if let t = treeWalk {
            primaryWalk = t
            a.primary = .tree
        } else if let l = listWalk {
            primaryWalk = l
            a.primary = .linearList
        } else {
            a.maxPfn = MaxPfnInfo(published: si.maxPfn, effective: 0, nrGpfns: nrGpfns)
            a.populatedKnown = false
            return a
        }

        a.primaryLeaves = primaryWalk.leaves
        let effective = min(maxPfn, UInt64(primaryWalk.leaves.count) &* fpp)
        a.maxPfn = MaxPfnInfo(published: si.maxPfn, effective: effective, nrGpfns: nrGpfns)
        try checkLeaves(primaryWalk, effective: effective, width: width, maxMFN: maxMFN, m2p: m2p, a: a)
        if let t = treeWalk, let l = listWalk {
            try crossCheck(tree: t.leaves, list: l.leaves, effective: effective, width: width, a: a)
        }
        return a
    }

    /// Xen's rules for a usable p2m_vaddr range (xg_sr_save_x86_pv.c map_p2m_list), plus alignment.
    private func listRangeProblem(vaddr: UInt64, leaves: Int, width: GuestWidth, levels: Int) -> String? {
        if vaddr & UInt64(pageSize - 1) != 0 { return "p2m_vaddr \(hex(vaddr)) is not page aligned" }
        let (bytes, o1) = UInt64(max(leaves, 1)).multipliedReportingOverflow(by: UInt64(pageSize))
        let (end, o2) = vaddr.addingReportingOverflow(bytes &- 1)
        if o1 || o2 { return "range from \(hex(vaddr)) wraps the address space" }
        switch width {
        case .bits64:
            let vaBits = UInt64(RadixShape.pageTables(levels: levels).vaBits)
            func canonical(_ v: UInt64) -> Bool {
                let shift = vaBits - 1
                return (Int64(bitPattern: v) >> Int64(shift)) == (Int64(bitPattern: v) >> 63)
            }
            if !canonical(vaddr) || !canonical(end) { return "range \(hex(vaddr))-\(hex(end)) is not canonical" }
            if vaddr <= XenVirtualLayout.hypervisorEnd64 && end >= XenVirtualLayout.hypervisorStart64 {
                return "range \(hex(vaddr))-\(hex(end)) touches Xen's hole"
            }
        case .bits32:
            if end > UInt64(UInt32.max) { return "range \(hex(vaddr))-\(hex(end)) is above 4 GiB" }
            if end >= XenVirtualLayout.hypervisorStartPAE { return "range \(hex(vaddr))-\(hex(end)) touches Xen's hypervisor area" }
        }
        return nil
    }
}

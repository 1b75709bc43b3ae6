#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// A model of what libxenguest does with a PV guest's P2M, written from reading
// xen-project/xen tools/libs/guest (RELEASE-4.17.0 and RELEASE-4.20.0, same checks):
//
//  save/migrate  xg_sr_save_x86_pv.c: map_p2m() reads max_pfn - 1 and takes the linear
//                list whenever p2m_cr3 != 0 (map_p2m_list), the tree otherwise
//                (map_p2m_tree); both bound every structure frame by 0 < mfn <= max_mfn
//                only, trim max_pfn by trailing identical entries, then map_p2m_leaves()
//                requires each leaf frame to be in the pseudo-physical map
//                (xg_sr_common_x86_pv.c: mfn_in_pseudophysmap). Pages are then copied
//                by pfn (xg_sr_save.c: write_batch): a frame the domain does not own is
//                typed XTAB by Xen and silently left out; a frame of the guest's own is
//                copied whatever pfn Xen's M2P gives it.
//  dump-core     xg_core_x86.c: sized from nr_gpfns, the list whenever p2m_cr3 != 0,
//                no max_mfn bound on page-table frames, no check of the tree's entries,
//                no generation check; xg_core.c skips INVALID, > max_mfn and unmappable
//                frames silently and keeps at most tot_pages of them.
//
// The walk here repeats libxenguest's arithmetic on purpose (32-bit counters, masked
// virtual addresses in messages, its trimming rules), because the prediction must say
// what libxenguest prints, not what a correct walker would find. Everything read from
// the guest is still bounded before use: a value libxenguest would use out of bounds
// ends the prediction as `fails` with that said, never as an out-of-bounds read here.
//
// This file: reading frames as libxenguest maps them, and the whole prediction.
// ToolstackSave.swift: map_p2m (tree and list) and map_p2m_leaves. ToolstackDump.swift:
// xl dump-core's own mapping of the P2M.

/// Where each check lives, for the report.
enum XenSource {
    static let save = "tools/libs/guest/xg_sr_save_x86_pv.c"
    static let core = "tools/libs/guest/xg_core_x86.c"
    static let mapP2mTree = save + ":map_p2m_tree"
    static let mapP2mList = save + ":map_p2m_list"
    static let mapP2mLeaves = save + ":map_p2m_leaves"
    static let generation = save + ":x86_pv_check_vm_state_p2m_list"
    static let writeBatch = "tools/libs/guest/xg_sr_save.c:write_batch"
    static let coreList = core + ":xc_core_arch_map_p2m_list_rw"
    static let coreTree = core + ":xc_core_arch_map_p2m_tree_rw"
    static let coreMap = core + ":xc_core_arch_map_p2m_rw"
    static let corePages = "tools/libs/guest/xg_core.c:xc_domain_dumpcore_via_callback"
}

/// C's `%#lx`: 0 prints as "0", anything else with a 0x prefix.
func cHex(_ v: UInt64) -> String { v == 0 ? "0" : "0x" + String(v, radix: 16) }

/// libxenctrl's PERROR suffix: " (errno = strerror)".
func perror(_ message: String, _ err: Int32) -> String {
    "\(message) (\(err) = \(String(cString: strerror(err))))"
}

/// One leaf frame that fails mfn_in_pseudophysmap.
struct OutsideLeaf {
    var index: Int
    var mfn: UInt64
    /// m2p[mfn], when mfn <= max_mfn.
    var m2p: UInt64?
    /// p2m[m2p[mfn]], when that pfn is <= max_pfn.
    var p2m: UInt64?
    /// Offline only: the dump holds no copy of this frame (so whether it was outside the
    /// map or refused to map live cannot be told apart).
    var notInDump = false
}

final class ToolstackModel {
    let session: HostSession
    let width: GuestWidth
    /// libxenguest's max_mfn: Xen's max_page as XENMEM_maximum_ram_page answers it, one
    /// past the host's last frame (x86_pv_map_m2p; the bed's save printed "max 0x140000"
    /// on a host whose last frame is 0x13ffff). Its bounds are `mfn <= max_mfn` against
    /// that value, and its messages print it. Offline, the dump's highest gmfn.
    let maxMFN: UInt64
    let m2p: UnsafeBufferPointer<UInt64>
    let si: ArchSharedInfo
    let sampleLimit: Int
    /// Most leaf frames a walk here maps: what the scan allowed for this guest (its
    /// max_pfn after the plausibility clamp). libxenguest has no such bound.
    let leafCap: UInt64
    /// A dump-core file: a frame the dump does not hold is one no pfn named when xl wrote
    /// it, i.e. outside the pseudo-physical map, not a frame that refuses to map; and
    /// max_mfn and the M2P are the dump's own (highest gmfn, .xen_p2m), not Xen's.
    let offline: Bool
    /// Leaf frames the scan has already mapped without an error: a toolstack walk that
    /// ends in the same frames need not map them again to know they map.
    var knownMappable: Set<UInt64> = []
    /// Most distinct leaf frames a check maps: the pfns the domain could own (the scan's
    /// bound before the fixed pseudo-physical allowance) over entries per frame. More
    /// distinct frames than that cannot all be the domain's own.
    var distinctLeafCap: UInt64 = .max

    init(session: HostSession, width: GuestWidth, maxMFN: UInt64, m2p: UnsafeBufferPointer<UInt64>, shared: ArchSharedInfo,
         sampleLimit: Int, walkMaxPfn: UInt64) {
        self.leafCap = walkMaxPfn / UInt64(width.fpp) + 2
        offline = session.host.backendName == "core"
        self.session = session
        self.width = width
        self.maxMFN = offline ? maxMFN : maxMFN &+ 1
        self.m2p = m2p
        self.si = shared
        self.sampleLimit = max(1, sampleLimit)
    }

    var fpp: UInt64 { UInt64(width.fpp) }

    /// GET_FIELD of the fll: the guest-width word, zero-extended (a 32-bit ~0 stays 0xffffffff).
    var rawFll: UInt64 { width == .bits32 && si.frameListList == .max ? 0xffff_ffff : si.frameListList }

    // MARK: - Reading frames as libxenguest maps them

    /// xc_map_foreign_pages: all or nothing; the errno of the first frame that failed.
    /// A map of no frames fails there with EINVAL (an mmap of length 0), so it is not
    /// asked of the host: xl dump-core of a guest whose nr_gpfns is 0 gets this far.
    func mapAll(_ mfns: ArraySlice<UInt64>) throws(HostError) -> (FrameMapping?, Int32) {
        if mfns.isEmpty { return (nil, EINVAL) }
        let m = try session.map(Array(mfns))
        if let e = m.errors.first(where: { $0 != 0 }) { return (nil, e) }
        return (m, 0)
    }

    /// Maps `mfns` in batches only to learn whether libxenguest's single map would succeed.
    /// Each distinct frame not already known to map is mapped once (a sparse P2M names its
    /// shared missing-entries page thousands of times); nil when there are more of them
    /// than `distinctLeafCap`, which the caller reports without mapping anything.
    func firstMapError(_ mfns: [UInt64]) throws(HostError) -> Int32? {
        if mfns.isEmpty { return EINVAL }
        var seen = Set<UInt64>(), todo: [UInt64] = []
        for m in mfns where !knownMappable.contains(m) && seen.insert(m).inserted {
            todo.append(m)
            if UInt64(todo.count) > distinctLeafCap { return nil }
        }
        var i = 0
        while i < todo.count {
            let end = min(todo.count, i + session.batchFrames)
            let m = try session.map(Array(todo[i..<end]))
            if let e = m.errors.first(where: { $0 != 0 }) { return e }
            i = end
        }
        return 0
    }

    /// Why a leaf list with more distinct frames than `distinctLeafCap` cannot map.
    func tooManyLeafFrames(_ n: Int) -> String {
        "libxenguest would map more than \(distinctLeafCap) distinct leaf frames (the list has \(n) entries), more than this domain can own: a foreign map of frames the domain does not own fails"
    }

    func word(_ page: UnsafeRawPointer, _ i: Int) -> UInt64 {
        switch width {
        case .bits64: return page.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)
        case .bits32:
            let v = page.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self)
            return v == .max ? .max : UInt64(v)
        }
    }

    /// Entries `0..<count` of consecutive guest-width pages (copy_mfns_from_guest).
    func words(_ m: FrameMapping, count: Int) -> [UInt64] {
        let per = width.fpp
        return (0..<count).map { word(m.page($0 / per)!, $0 % per) }
    }

    func implausible(_ frames: UInt64) -> String {
        "libxenguest would map \(frames) leaf frames for the max_pfn this guest publishes (\(cHex(si.maxPfn))), far beyond what the domain can own: it fails allocating or mapping them"
    }

    func pte(_ m: FrameMapping, _ idx: Int) -> UInt64 {
        m.page(idx / 512)!.loadUnaligned(fromByteOffset: (idx % 512) &* 8, as: UInt64.self)
    }

    // MARK: - Whole prediction

    /// What the scan found that decides the copy's outcome once setup succeeded.
    struct ScanFacts {
        var findings: [Finding]
        var populated: UInt64
        var populatedKnown: Bool
        var totPages: UInt64
        var nrGpfns: UInt64?
        var unstable: Bool
        var scanPath: P2MFormat?

        func finding(_ k: FindingKind) -> Finding? { findings.first { $0.kind == k } }
        func count(_ k: FindingKind) -> UInt64 { finding(k)?.count ?? 0 }
    }

    /// Runs every prediction; returns the section and the leaf frames outside the
    /// pseudo-physical map (for the report's finding).
    func predict(_ facts: ScanFacts) throws(HostError) -> (ToolstackReport, SaveSetup) {
        let save = try saveSetup()
        var out: [ToolstackPrediction] = []

        // Per-entry consequences, shared by save and migrate.
        var wrongPfns: [UInt64] = [], wrongCount: UInt64 = 0
        var droppedPfns: [UInt64] = [], droppedCount: UInt64 = 0
        if let f = facts.finding(.m2pMismatch) {
            // A frame the domain owns is copied; one it does not own is typed XTAB and left out.
            let samples = f.samples.compactMap { s -> (UInt64, UInt64)? in
                guard let p = s.pfn, let m = s.mfn else { return nil }
                return (p, m)
            }
            let probe = samples.isEmpty ? nil : try session.map(samples.map(\.1))
            var unowned: UInt64 = 0
            for (k, (p, _)) in samples.enumerated() {
                if probe?.errors[k] == 0 { wrongPfns.append(p) } else { droppedPfns.append(p); unowned += 1 }
            }
            // Entries beyond the samples: assume owned, as the sampled ones mostly are.
            wrongCount = f.count - unowned
            droppedCount = unowned
        }
        for k in [FindingKind.mfnOutOfRange, .frameUnmappable] {
            guard let f = facts.finding(k) else { continue }
            droppedCount &+= f.count
            droppedPfns += f.samples.compactMap(\.pfn)
        }
        let copyKinds: Set<FindingKind> = [.m2pMismatch, .duplicateMfn, .mfnOutOfRange, .frameUnmappable, .p2mFrameOutsidePhysmap]
        // Critical findings the copy does not explain make an otherwise clean operation
        // `risky`, unless they concern only the format the operation does not read (a
        // bogus fll does not matter to a save that reads the list).
        func unexplained(reading path: P2MFormat) -> [String] {
            facts.findings.filter { f in
                guard f.severity == .critical, !copyKinds.contains(f.kind) else { return false }
                let formats = Set(f.samples.map(\.format))
                return !(formats.count == 1 && formats.first! != nil && formats.first! != path)
            }.map(\.kind.rawValue)
        }

        func copyOutcome(_ op: ToolstackOperation) -> ToolstackPrediction {
            let path = save.path
            if let lines = save.failure {
                return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .fails, messages: lines,
                                           source: save.source,
                                           pfns: save.outside.prefix(sampleLimit).compactMap(\.m2p), pfnCount: UInt64(save.outside.count),
                                           detail: save.detail.isEmpty ? "libxenguest refuses while mapping the P2M, before any page is copied" : save.detail)
            }
            if wrongCount > 0 {
                return ToolstackPrediction(
                    operation: op, path: path, pathReason: save.pathReason, outcome: .copiesWrongMemory, source: XenSource.writeBatch,
                    pfns: Array(wrongPfns.prefix(sampleLimit)), pfnCount: wrongCount,
                    detail: "\(wrongCount) pfn(s) name a frame Xen's M2P gives to another pfn: libxenguest copies each from the frame its entry names, without an error. "
                        + "A page table that still maps such a pfn's own frame fails mfn_in_pseudophysmap (normalise_pagetable); the suspended, not paused, "
                        + "domain makes that EAGAIN, so that page-table page is deferred and not restored: on the test bed (Xen 4.17 and 4.20) the restored kernel oopses while resuming. "
                        + "Where no page table maps that frame any more, the restored guest runs, with the other frame's content at that pfn"
                        + (droppedCount > 0 ? "; \(droppedCount) more pfn(s) are left out" : ""))
            }
            if droppedCount > 0 {
                return ToolstackPrediction(
                    operation: op, path: path, pathReason: save.pathReason, outcome: .incomplete, source: XenSource.writeBatch,
                    pfns: Array(droppedPfns.prefix(sampleLimit)), pfnCount: droppedCount,
                    detail: "\(droppedCount) pfn(s) name a frame the domain does not own or beyond the host: Xen types them XTAB and libxenguest leaves them out of the image without an error")
            }
            let other = unexplained(reading: path)
            if !other.isEmpty {
                return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .risky,
                                           detail: "libxenguest's own checks pass, but the P2M is inconsistent (\(other.joined(separator: ", "))): the image is what the \(path == .tree ? "tree" : "list") says, not necessarily the guest's memory")
            }
            if op == .migrate {
                if path == .linearList && facts.unstable {
                    return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .abortsIfChanging,
                                               messages: ["p2m generation count changed. Migration aborted."], source: XenSource.generation,
                                               detail: "p2m_generation moved or was odd during the scan: a live migration that sees it move between rounds aborts")
                }
                if path == .tree && facts.unstable {
                    return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .risky,
                                               detail: "the guest is changing its P2M and the tree path has no generation check: a live migration copies whatever the tree says at the end")
                }
                return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .works,
                                           detail: path == .linearList
                                               ? "live rounds compare p2m_generation: a guest that changes its P2M mapping meanwhile (ballooning) aborts with \"p2m generation count changed. Migration aborted.\""
                                               : "the tree path has no generation check")
            }
            return ToolstackPrediction(operation: op, path: path, pathReason: save.pathReason, outcome: .works,
                                       detail: "every leaf frame is in the pseudo-physical map and every entry names the guest's own frame")
        }
        out.append(copyOutcome(.save))
        out.append(copyOutcome(.migrate))
        let dumpPath: P2MFormat = si.p2mCr3 != 0 ? .linearList : .tree
        out.append(try dumpPrediction(facts, save: save, wrong: (wrongPfns, wrongCount), dropped: (droppedPfns, droppedCount),
                                      unexplained: unexplained(reading: dumpPath)))
        out.append(treeOnly(facts, save: save))
        return (ToolstackReport(predictions: out), save)
    }

    private func dumpPrediction(_ facts: ScanFacts, save: SaveSetup, wrong: ([UInt64], UInt64), dropped: ([UInt64], UInt64),
                                unexplained: [String]) throws(HostError) -> ToolstackPrediction {
        let d = try dumpSetup(nrGpfns: facts.nrGpfns, totPages: facts.totPages)
        if let lines = d.failure {
            return ToolstackPrediction(operation: .dumpCore, path: d.path, pathReason: d.pathReason, outcome: .fails, messages: lines,
                                       source: d.source, detail: d.detail.isEmpty ? "xl dump-core stops while mapping the P2M" : d.detail)
        }
        // Leaf frames no pfn names are not in the core; a pfn the M2P gives them is
        // either missing (INVALID entry) or dumped from another frame. Only meaningful
        // when dump-core reads the same structure as the save path.
        var missing = dropped.0, missingCount = dropped.1
        var wrongPfns = wrong.0, wrongCount = wrong.1
        if d.path == save.path {
            for o in save.outside {
                guard let p = o.m2p, p != .max else { continue }
                if o.p2m == .max || o.p2m == nil { missing.append(p); missingCount &+= 1 } else if !wrongPfns.contains(p) {
                    wrongPfns.append(p)
                    wrongCount &+= 1
                }
            }
        }
        var extra = ""
        if facts.populatedKnown && facts.populated > facts.totPages {
            let n = facts.populated - facts.totPages
            missingCount &+= n
            extra = "; the core holds at most tot_pages (\(facts.totPages)) frames, so the last \(n) populated pfn(s) are dropped"
        }
        if wrongCount > 0 {
            return ToolstackPrediction(operation: .dumpCore, path: d.path, pathReason: d.pathReason, outcome: .copiesWrongMemory,
                                       source: XenSource.corePages, pfns: Array(wrongPfns.prefix(sampleLimit)), pfnCount: wrongCount,
                                       detail: "\(wrongCount) pfn(s) are dumped from a frame that is not theirs"
                                           + (missingCount > 0 ? "; \(missingCount) pfn(s) are missing" : "") + extra)
        }
        if missingCount > 0 {
            return ToolstackPrediction(operation: .dumpCore, path: d.path, pathReason: d.pathReason, outcome: .incomplete,
                                       source: XenSource.corePages, pfns: Array(missing.prefix(sampleLimit)), pfnCount: missingCount,
                                       detail: "xl dump-core exits 0 but the core lacks \(missingCount) frame(s) of the guest (skipped without a message)" + extra)
        }
        if !unexplained.isEmpty {
            return ToolstackPrediction(operation: .dumpCore, path: d.path, pathReason: d.pathReason, outcome: .risky,
                                       detail: "xl dump-core's checks pass, but the P2M is inconsistent (\(unexplained.joined(separator: ", "))): the core's .xen_p2m is what the guest published")
        }
        return ToolstackPrediction(operation: .dumpCore, path: d.path, pathReason: d.pathReason, outcome: .works,
                                   detail: "sized from nr_gpfns (\(d.p2mSize) pfns after trimming); runs without pausing the guest and without a generation check")
    }

    /// Before migration v2 (Xen 4.6) the save path knew only the tree.
    private func treeOnly(_ facts: ScanFacts, save: SaveSetup) -> ToolstackPrediction {
        let reason = "the pre-4.6 save path reads only the 3-level tree"
        func line(_ o: ToolstackOutcome, _ d: String) -> ToolstackPrediction {
            ToolstackPrediction(operation: .treeOnlyToolstack, path: .tree, pathReason: reason, outcome: o, detail: d)
        }
        if si.frameListList == .max { return line(.fails, "fll is ~0 (linear list only): it cannot find the P2M (\"Couldn't map p2m_frame_list_list\")") }
        if si.frameListList == 0 { return line(.fails, "fll is 0: no tree published") }
        if facts.count(.treeCapacityExceeded) > 0 { return line(.fails, "max_pfn is beyond what the 3-level tree describes") }
        let treeProblems = facts.findings.filter { $0.severity == .critical && $0.samples.contains { $0.format == .tree } }
        if !treeProblems.isEmpty { return line(.fails, "the tree is damaged (\(treeProblems.map(\.kind.rawValue).joined(separator: ", ")))") }
        if !save.outside.isEmpty { return line(.fails, "P2M leaf frames outside the pseudo-physical map: the pre-4.6 save checked its frame list for that too") }
        if facts.findings.contains(where: { $0.severity == .critical }) { return line(.risky, "the tree is readable but the P2M is inconsistent") }
        return line(.works, "fll and the tree are consistent")
    }
}

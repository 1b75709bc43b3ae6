// The scanner's side of the toolstack prediction: hands the model what the scan found
// and turns the leaf frames outside the pseudo-physical map into a finding.

extension P2MScanner {
    func predictToolstack(_ a: Attempt, info: DomainInfo, width: GuestWidth, maxMFN: UInt64, m2p: M2PMapping,
                          nrGpfns: UInt64?, unstable: Bool) throws(HostError) -> ToolstackReport? {
        guard let si = a.shared else { return nil }
        let model = ToolstackModel(session: a.session, width: width, maxMFN: maxMFN, m2p: m2p.entries, shared: si,
                                   sampleLimit: options.sampleLimit, walkMaxPfn: a.walkMaxPfn)
        model.distinctLeafCap = a.domainPfnBound / UInt64(width.fpp) + 2
        if !a.findings.findings.contains(where: { $0.kind == .structureUnmappable }) {
            model.knownMappable = Set(a.primaryLeaves.lazy.filter { $0 != unreadableLeaf })
        }
        let facts = ToolstackModel.ScanFacts(findings: a.findings.findings, populated: a.populated, populatedKnown: a.populatedKnown,
                                             totPages: info.totPages, nrGpfns: nrGpfns, unstable: unstable, scanPath: a.primary)
        let (report, save) = try model.predict(facts)
        // The p2m value was read through the toolstack's leaf list: it speaks for the guest
        // only where that list and the scan's agree.
        func sameLeaf(_ h: UInt64) -> Bool {
            h < UInt64(a.primaryLeaves.count) && h < UInt64(save.leaves.count) && a.primaryLeaves[Int(h)] == save.leaves[Int(h)]
        }
        // The finding is about the guest, not about libxenguest's arithmetic: a pfn the
        // toolstack's trimmed max_pfn leaves out (it compares relative and absolute
        // level-2 indexes) still makes the save fail, but is no fault of the guest's.
        // Only leaves the scan's own walk found at that index are the guest's; a dump that
        // lacks a leaf frame says nothing about the guest's pseudo-physical map.
        for o in save.outside where (o.m2p == nil || o.m2p! >= si.maxPfn || o.p2m != nil) && !o.notInDump
            && o.index < a.primaryLeaves.count && a.primaryLeaves[o.index] == o.mfn
            && (o.p2m == nil || sameLeaf(o.m2p! / UInt64(width.fpp))) {
            a.findings.add(.p2mFrameOutsidePhysmap, FindingSample(
                pfn: o.m2p, mfn: o.mfn, found: o.p2m, index: UInt64(o.index), format: save.path,
                note: o.m2p == nil ? "mfn above the host's max MFN"
                    : (o.p2m == nil ? "m2p[mfn] is beyond max_pfn \(cHex(save.maxPfn))" : "p2m[m2p[mfn]] is not this frame")))
        }
        return report
    }
}

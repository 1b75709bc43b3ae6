import P2MEngine

extension FuzzHarness {
    /// The preflight never says `works` for an operation while the engine calls the guest
    /// broken, unless every critical finding concerns only the format that operation does
    /// not read (a bogus fll does not stop a save that reads the list); and a PV report
    /// always carries the section, with a message for every `fails` libxenguest prints one.
    static func checkToolstack(_ r: P2MReport, options o: ScanOptions, _ v: inout [String]) {
        guard r.error == nil, r.domainType == .pv, o.predictToolstack else { return }
        guard let t = r.toolstack else { return v.append("PV report without a toolstack section") }
        let critical = r.findings.filter { $0.severity == .critical }
        for p in t.predictions where p.outcome == .works {
            let relevant = critical.filter { f in
                // xl dump-core maps leaf frames by MFN and never asks which pfn they are.
                if p.operation == .dumpCore && f.kind == .p2mFrameOutsidePhysmap { return false }
                let formats = Set(f.samples.map(\.format))
                return !(formats.count == 1 && formats.first! != nil && formats.first! != p.path)
            }
            if !relevant.isEmpty {
                v.append("toolstack predicts \(p.operation.rawValue) works over \(p.path?.rawValue ?? "-"), but the engine found \(relevant.map(\.kind.rawValue))")
            }
        }
        if r.count(.p2mFrameOutsidePhysmap) > 0, let s = t.prediction(.save), s.outcome != .fails {
            v.append("leaf frame outside the pseudo-physical map, yet save predicted \(s.outcome.rawValue)")
        }
        for p in t.predictions where p.outcome != .fails && !p.messages.isEmpty && p.outcome != .abortsIfChanging {
            v.append("\(p.operation.rawValue) predicted \(p.outcome.rawValue) with messages \(p.messages)")
        }
    }
}

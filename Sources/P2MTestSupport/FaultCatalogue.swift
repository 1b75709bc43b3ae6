import P2MSimulator

/// Every fault the simulator can inject into a 64-bit Linux-like guest, once, with the
/// published formats it is injected under. The engine's fault tests, the offline-equals-live
/// tests and the incremental-latency tests all draw from this one list, so a new `SimFault`
/// reaches all of them (the lists they used to keep each had drifted from the others).
///
/// A new `SimFault` case does not compile until `FaultCase.init` names it and
/// `FaultCatalogue.entries(for:)` either lists it or says why it is not a finding fault.
public enum FaultCatalogue {
    public struct Entry: Sendable, CustomStringConvertible {
        public var fault: SimFault
        public var formats: PublishedFormats
        /// The guest must populate a whole 512-leaf chunk (1 GiB) for the fault to apply.
        public var needsWholeChunk = false
        public var description: String { "\(fault) [\(formats.rawValue)]" }
    }

    /// The catalogue for a guest of `memoryMiB` populated (less a partly populated last
    /// leaf) and `maxMiB` of maxmem. Faults that need more than the guest has are left out.
    public static func faults64(memoryMiB: UInt64, maxMiB: UInt64) -> [Entry] {
        FaultCase.allCases.flatMap { entries(for: $0, memoryMiB: memoryMiB, maxMiB: maxMiB) }
            .filter { !$0.needsWholeChunk || memoryMiB >= 1024 }
    }

    /// Why a fault case has no entry: it is not a fault with a finding of its own.
    public static func exclusion(_ c: FaultCase) -> String? {
        switch c {
        case .vanishAfterMapCalls: "the domain disappears mid-scan: a scan outcome (gone), tested in the vanishing-domain tests"
        case .allMapsFail: "every map call fails: a scan error, tested in the host-error tests"
        default: nil
        }
    }

    static func entries(for c: FaultCase, memoryMiB m: UInt64, maxMiB x: UInt64) -> [Entry] {
        let pages = m << 8
        switch c {
        case .m2pMismatch: return [Entry(fault: .m2pMismatch(pfn: 1234), formats: .both)]
        case .duplicateMfn: return [Entry(fault: .duplicateMfn(pfn: 5001, sameAs: 5000), formats: .both)]
        case .mfnOutOfRange: return [Entry(fault: .mfnOutOfRange(pfn: 777), formats: .both)]
        case .identityMismatch: return [Entry(fault: .identityMismatch(pfn: pages - 50), formats: .both)]
        case .unmappableDataFrame: return [Entry(fault: .unmappableDataFrame(pfn: 4242), formats: .both)]
        case .treeListMismatch: return [Entry(fault: .treeListMismatch(pfn: 3000), formats: .both)]
        case .zeroFllEntry:
            return [Entry(fault: .zeroFllEntry(index: 0), formats: .both), Entry(fault: .zeroFllEntry(index: 0), formats: .treeOnly)]
        case .badPteFrame: return [Entry(fault: .badPteFrame(leaf: 3), formats: .both)]
        case .unmappableLeaf:
            return [Entry(fault: .unmappableLeaf(leaf: 4), formats: .both), Entry(fault: .unmappableLeaf(leaf: 9), formats: .listOnly)]
        case .sharedLeaf: return [Entry(fault: .sharedLeaf(leaf: 6, sameAs: 2), formats: .both)]
        case .pageTableCycle: return [Entry(fault: .pageTableCycle(leaf: 1), formats: .both)]
        case .pteNotPresent: return [Entry(fault: .pteNotPresent(leaf: 5), formats: .both)]
        case .largePage: return [Entry(fault: .largePage(chunk: 0), formats: .both, needsWholeChunk: true)]
        case .listVaddr:
            return [0x0000_9000_0000_0000, 0xffff_8000_0000_0000, 0xffff_c900_0000_0123].map {
                Entry(fault: .listVaddr($0), formats: .both)
            }
        case .publishedMaxPfn: return [Entry(fault: .publishedMaxPfn(1 << 52), formats: .treeOnly)]
        case .unpublished: return [Entry(fault: .unpublished, formats: .both)]
        case .generationAlwaysMoving: return [Entry(fault: .generationAlwaysMoving, formats: .both)]
        case .extraOwnedPages: return [Entry(fault: .extraOwnedPages(3), formats: .both)]
        // Above maxmem: xl dump-core walks pfns below nr_gpfns, so a smaller value would
        // cut the dump short instead of only disagreeing with max_pfn.
        case .nrGpfns: return [Entry(fault: .nrGpfns((x << 8) + 4096), formats: .both)]
        case .leafOutsidePhysmap:
            return [Entry(fault: .leafOutsidePhysmap(leaf: 3, otherFrame: false), formats: .both),
                    Entry(fault: .leafOutsidePhysmap(leaf: 3, otherFrame: true), formats: .both)]
        case .frameListList: return [Entry(fault: .frameListList(0x7fff_fff0), formats: .both)]
        // A CR3 naming a frame beyond the host (64-bit CR3: the MFN shifted by 12).
        case .p2mCr3: return [Entry(fault: .p2mCr3(0x7fff_fff0 << 12), formats: .both)]
        case .zeroMidEntry: return [Entry(fault: .zeroMidEntry(leaf: 2), formats: .both)]
        case .vanishAfterMapCalls, .allMapsFail: return []
        }
    }
}

/// The cases of `SimFault` without their parameters.
public enum FaultCase: String, CaseIterable, Sendable {
    case m2pMismatch, duplicateMfn, mfnOutOfRange, identityMismatch, unmappableDataFrame, treeListMismatch
    case zeroFllEntry, badPteFrame, unmappableLeaf, sharedLeaf, pageTableCycle, pteNotPresent, largePage
    case listVaddr, publishedMaxPfn, unpublished, generationAlwaysMoving, extraOwnedPages, nrGpfns
    case vanishAfterMapCalls, allMapsFail, leafOutsidePhysmap, frameListList, p2mCr3, zeroMidEntry

    public init(_ f: SimFault) {
        switch f {
        case .m2pMismatch: self = .m2pMismatch
        case .duplicateMfn: self = .duplicateMfn
        case .mfnOutOfRange: self = .mfnOutOfRange
        case .identityMismatch: self = .identityMismatch
        case .unmappableDataFrame: self = .unmappableDataFrame
        case .treeListMismatch: self = .treeListMismatch
        case .zeroFllEntry: self = .zeroFllEntry
        case .badPteFrame: self = .badPteFrame
        case .unmappableLeaf: self = .unmappableLeaf
        case .sharedLeaf: self = .sharedLeaf
        case .pageTableCycle: self = .pageTableCycle
        case .pteNotPresent: self = .pteNotPresent
        case .largePage: self = .largePage
        case .listVaddr: self = .listVaddr
        case .publishedMaxPfn: self = .publishedMaxPfn
        case .unpublished: self = .unpublished
        case .generationAlwaysMoving: self = .generationAlwaysMoving
        case .extraOwnedPages: self = .extraOwnedPages
        case .nrGpfns: self = .nrGpfns
        case .vanishAfterMapCalls: self = .vanishAfterMapCalls
        case .allMapsFail: self = .allMapsFail
        case .leafOutsidePhysmap: self = .leafOutsidePhysmap
        case .frameListList: self = .frameListList
        case .p2mCr3: self = .p2mCr3
        case .zeroMidEntry: self = .zeroMidEntry
        }
    }
}

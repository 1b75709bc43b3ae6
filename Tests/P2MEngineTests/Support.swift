import Foundation
@testable import P2MEngine
@testable import P2MSimulator

func host(_ gib: UInt64 = 2) -> SimulatedHost { SimulatedHost(memoryGiB: gib) }

func scan(_ h: SimulatedHost, _ domid: DomID, _ configure: (inout ScanOptions) -> Void = { _ in }) -> P2MReport {
    var o = ScanOptions()
    configure(&o)
    return P2MScanner(host: h, options: o).scan(domid)
}

func kinds(_ r: P2MReport) -> Set<FindingKind> { Set(r.findings.map(\.kind)) }

/// Walks one format of a guest with the engine's walker and reads every entry back
/// through the walked leaf frames, widened like the engine widens them.
func walkedEntries(_ h: SimulatedHost, _ domid: DomID, format: P2MFormat, shape: RadixShape? = nil) throws -> [UInt64] {
    let info = try h.domainInfo(domid)
    let width = try h.guestWidth(domid)
    let si = ArchSharedInfo(page: try h.sharedInfoPage(domid, frame: info.sharedInfoFrame), width: width)!
    let maxMFN = try h.maxMFN()
    let session = HostSession(host: h, domid: domid, batchFrames: 64)
    var findings = FindingCollector(sampleLimit: 4)
    let fpp = UInt64(width.fpp)
    let leafCount = Int((si.maxPfn + fpp - 1) / fpp)
    let result: WalkResult
    switch format {
    case .tree:
        let w = RadixWalker(shape: shape ?? .mfnTree(levels: 3, width: width), format: .tree, maxMFN: maxMFN, session: session)
        result = try w.walk(root: si.frameListList, vpnStart: 0, leafCount: leafCount, trim: false, findings: &findings)
    case .linearList:
        let s = shape ?? (width == .bits64 ? .pageTables(levels: 4) : .pae)
        let vaBits = UInt64(width == .bits64 ? 12 + 9 * s.levels : 32)
        let w = RadixWalker(shape: s, format: .linearList, maxMFN: maxMFN, session: session)
        result = try w.walk(root: CR3.mfn(si.p2mCr3, width: width), vpnStart: (si.p2mVaddr & ((1 << vaBits) - 1)) >> 12,
                            leafCount: leafCount, trim: false, findings: &findings)
    }
    guard findings.isEmpty, result.clean else { throw WalkFailed(findings: findings.findings) }
    let mapping = try session.map(result.leaves)
    var out: [UInt64] = []
    out.reserveCapacity(Int(si.maxPfn))
    for pfn in 0..<si.maxPfn {
        let leaf = Int(pfn / fpp)
        let page = mapping.page(leaf)!
        let i = Int(pfn % fpp)
        if width == .bits64 {
            out.append(page.load(fromByteOffset: i * 8, as: UInt64.self))
        } else {
            let v = page.load(fromByteOffset: i * 4, as: UInt32.self)
            out.append(v == .max ? .max : UInt64(v))
        }
    }
    return out
}

struct WalkFailed: Error { var findings: [Finding] }

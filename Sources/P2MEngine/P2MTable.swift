#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Every pfn -> mfn of a guest, read the way `xen-mfndump dump-p2m` and `xl dump-core`
/// read it (xc_map_domain_meminfo -> xc_core_arch_map_p2m: the linear list whenever
/// p2m_cr3 != 0, sized from nr_gpfns, trimmed as libxenguest trims): the peer a bed
/// compares entry by entry with xen-mfndump.
public struct P2MTable: Sendable, Equatable {
    public var domid: DomID
    public var width: GuestWidth
    public var path: P2MFormat
    /// Entries, INVALID widened to 64 bits as xen-mfndump prints it.
    public var entries: [UInt64]

    public var ptLevels: Int { width == .bits64 ? 4 : 3 }

    /// Reads the table, or says why libxenguest (and so xen-mfndump) could not.
    public static func read(host: any P2MHost, domid: DomID, batchFrames: Int = 256) throws(HostError) -> P2MTable {
        let info = try host.domainInfo(domid)
        guard info.type == .pv else { throw HostError.unsupported("domain \(domid) is \(info.type.rawValue.uppercased()): Xen keeps its p2m, there is none to dump") }
        let width = try host.guestWidth(domid)
        let maxMFN = try host.maxMFN()
        let m2p = try host.mapM2P(maxMFN: maxMFN)
        let si = try ArchSharedInfo.read(from: host, info, width)
        let nr = try? host.nrGpfns(domid)
        let session = HostSession(host: host, domid: domid, batchFrames: batchFrames)
        // Bounded like a scan: a guest's max_pfn cannot size more than its domain could own.
        let byDomain = P2MScanner.domainPfnBound(info, maxMFN: maxMFN)
        let bound = max(byDomain, P2MScanner.pfnSpaceAlwaysAllowed)
        let model = ToolstackModel(session: session, width: width, maxMFN: maxMFN, m2p: m2p.entries, shared: si,
                                   sampleLimit: 1, walkMaxPfn: min(max(si.maxPfn, nr ?? 0), bound))
        model.distinctLeafCap = byDomain / UInt64(width.fpp) + 2
        let d = try model.dumpSetup(nrGpfns: nr, totPages: info.totPages)
        if let lines = d.failure {
            throw HostError.unsupported("libxenguest cannot map this guest's P2M (\(d.source ?? "")): \(lines.first ?? d.detail)")
        }
        let fpp = width.fpp
        var out: [UInt64] = []
        out.reserveCapacity(Int(min(d.p2mSize, UInt64(d.leaves.count) * UInt64(fpp))))
        var k = 0
        while k < d.leaves.count && UInt64(out.count) < d.p2mSize {
            let chunk = Array(d.leaves[k..<min(d.leaves.count, k + session.batchFrames)])
            let m = try session.map(chunk)
            for slot in 0..<chunk.count {
                guard let p = m.page(slot) else {
                    throw HostError.system(operation: "map leaf frame \(cHex(chunk[slot])) of domain \(domid)", errno: m.errors[slot])
                }
                for i in 0..<fpp where UInt64(out.count) < d.p2mSize {
                    switch width {
                    case .bits64: out.append(p.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))
                    case .bits32:
                        let v = p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)
                        out.append(v == .max ? .max : UInt64(v))
                    }
                }
            }
            k += chunk.count
        }
        return P2MTable(domid: domid, width: width, path: d.path, entries: out)
    }

    /// xen-mfndump dump-p2m's layout. xenp2m knows no page types (that is a domctl only
    /// Xen's tools use), so the ` (type 0x..)` column is left out; compare pfn and mfn.
    public func mfndumpText() -> String {
        var s = " --- Dumping P2M for domain \(domid) ---\n"
        s += " Guest Width: \(width.bytes), PT Levels: \(ptLevels) P2M size: = \(entries.count)\n"
        for (pfn, mfn) in entries.enumerated() {
            s += "  pfn=0x\(String(pfn, radix: 16)) ==> mfn=0x\(String(mfn, radix: 16))\n"
        }
        s += " --- End of P2M for domain \(domid) ---\n"
        return s
    }

    /// One JSON object per pfn: {"pfn":N,"mfn":N}.
    public func jsonLines() -> String {
        var s = ""
        s.reserveCapacity(entries.count * 32)
        for (pfn, mfn) in entries.enumerated() { s += "{\"pfn\":\(pfn),\"mfn\":\(mfn)}\n" }
        return s
    }
}

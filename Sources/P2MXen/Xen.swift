// The real-Xen backend: P2MHost over libxenctrl, reached only through XenControlInterface
// so that every errno translation below can be exercised without a hypervisor.

import Logging
import P2MEngine

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A P2MHost backed by libxenctrl in dom0.
///
/// `@unchecked Sendable`: the only mutable-looking state is the shim handle, an opaque
/// pointer Swift cannot reason about. It is opened without XC_OPENFLAG_NON_REENTRANT, and
/// libxenctrl, libxenforeignmemory and libxenstore handles opened that way may be used by
/// several threads at once; every stored property is immutable after init.
public final class XenHost: P2MHost, @unchecked Sendable {
    /// Where the privcmd driver lives when Xen is present.
    static let privcmdPath = "/proc/xen/privcmd"
    /// Domains per xp2m_list_domains call; a host may run thousands.
    static let listChunk: UInt32 = 256

    public var backendName: String { "xen" }

    let control: any XenControlInterface
    let handle: XenHandle
    let logger: Logger
    /// The domain this process runs in: its own P2M is out of reach (see DomainInfo.isCaller).
    let callerDomid: DomID
    /// Owns the log context the shim holds; must outlive `handle`, so it is released after deinit closes it.
    private let logSink: XenLogSink

    /// Opens libxenctrl. Throws `.noXen` on a machine without Xen.
    public static func open(logger: Logger) throws(HostError) -> XenHost {
        try XenHost(control: ShimControl(), logger: logger)
    }

    init(control: any XenControlInterface, logger: Logger) throws(HostError) {
        let sink = XenLogSink(logger: logger)
        self.control = control
        self.logger = logger
        self.logSink = sink
        let h: XenHandle
        do {
            // libxenctrl may log while opening (that is how it explains a failure), so the
            // sink is already owned by self before the shim first sees its pointer.
            h = try control.open(log: xenLogCallback, context: sink.context)
        } catch {
            throw Self.openError(error)
        }
        do throws(HostError) {
            hypervisor = try Self.checkHypervisor(control, h)
        } catch {
            control.close(h)
            throw error
        }
        handle = h
        callerDomid = Self.callerDomid(control, handle, logger: logger)
    }

    /// The running hypervisor's version, checked against the interface this build speaks.
    public let hypervisor: XenVersion

    /// Reads what runs and refuses a hypervisor whose domctl interface differs from the
    /// libraries' (every guest-width query would fail with EACCES).
    static func checkHypervisor(_ control: any XenControlInterface, _ h: XenHandle) throws(HostError) -> XenVersion {
        let v: XenVersion
        do {
            v = try control.hypervisorVersion(h)
        } catch {
            throw .system(operation: "read the hypervisor version (xc_version)", errno: error.code)
        }
        do {
            try control.checkDomctl(h)
        } catch {
            if error.code == EACCES && v.series != XenVersion.built.series {
                throw .hypervisorNotDrivable(hypervisor: v.description, builtFor: XenVersion.builtInterface)
            }
            throw .system(operation: "query dom0 through a domctl (Xen \(v), built for \(XenVersion.builtInterface))", errno: error.code)
        }
        return v
    }

    /// Which domain we are, from our own xenstore directory. Without an answer it is
    /// domain 0: only the control domain may list and map other domains, and every
    /// toolstack xenp2m supports (xl/libxl, XAPI) runs it as domain 0.
    static func callerDomid(_ control: any XenControlInterface, _ handle: XenHandle, logger: Logger) -> DomID {
        let text: String
        do {
            text = try control.ownXenstoreValue(handle, key: "domid")
        } catch {
            logger.notice("cannot read this domain's id from xenstore; taking it to be dom0 (domain 0)", metadata: [
                "error": "\(HostError.system(operation: "read \"domid\" from this domain's xenstore directory", errno: error.code))",
            ])
            return 0
        }
        guard let d = DomID(text) else {
            logger.warning("this domain's xenstore \"domid\" is not a domain id; taking it to be dom0 (domain 0)",
                           metadata: ["value": "\(text)"])
            return 0
        }
        return d
    }

    deinit {
        control.close(handle)
    }

    static func openError(_ e: ShimErrno) -> HostError {
        switch e.code {
        case ENOENT:
            return .noXen(path: privcmdPath)
        case EACCES, EPERM:
            return .system(operation: "open libxenctrl (run as root in dom0)", errno: e.code)
        default:
            return .system(operation: "open libxenctrl", errno: e.code)
        }
    }

    // MARK: P2MHost

    public func listDomains() throws(HostError) -> [DomainInfo] {
        var result: [DomainInfo] = []
        var next: UInt32 = 0
        while true {
            let first = next
            let chunk = try call("list domains from domid \(first)") { () throws(ShimErrno) in
                try control.listDomains(handle, first: first, max: Self.listChunk)
            }
            result.append(contentsOf: chunk.map { Self.domainInfo($0, caller: callerDomid) })
            // A short chunk is the end. The domid checks only guard against a list that
            // does not advance, which would otherwise loop forever.
            guard chunk.count >= Int(Self.listChunk), let last = chunk.last?.domid,
                  last >= first, last < UInt32.max else { break }
            next = last + 1
        }
        return result
    }

    public func domainInfo(_ domid: DomID) throws(HostError) -> DomainInfo {
        let raw = try call("get info of domain \(domid)", goneAs: domid) { () throws(ShimErrno) in
            try control.domainInfo(handle, domid: domid)
        }
        // getinfolist answers with the next domain at or above domid; only an exact match counts.
        guard raw.domid == domid else { throw .domainNotFound(domid) }
        return Self.domainInfo(raw, caller: callerDomid)
    }

    public func guestWidth(_ domid: DomID) throws(HostError) -> GuestWidth {
        let width = try call("get guest width of domain \(domid)") { () throws(ShimErrno) in
            try control.guestWidth(handle, domid: domid)
        }
        switch width {
        case 4: return .bits32
        case 8: return .bits64
        default: throw .unsupported("guest width of \(width) bytes for domain \(domid) (expected 4 or 8)")
        }
    }

    public func nrGpfns(_ domid: DomID) throws(HostError) -> UInt64 {
        try call("get nr_gpfns of domain \(domid)") { () throws(ShimErrno) in
            try control.nrGpfns(handle, domid: domid)
        }
    }

    public func maxMFN() throws(HostError) -> UInt64 {
        let maxPage = try call("get the host's maximum RAM page") { () throws(ShimErrno) in
            try control.maxRAMPage(handle)
        }
        // Xen answers max_page, one past the last frame; the engine wants the last frame.
        guard maxPage > 0 else {
            throw .inconsistent(operation: "get the host's maximum RAM page", detail: "Xen answered max_page 0, a host without memory")
        }
        return maxPage - 1
    }

    public func sharedInfoPage(_ domid: DomID, frame: UInt64) throws(HostError) -> [UInt8] {
        let page = try call("map shared info frame \(hex(frame)) of domain \(domid)") { () throws(ShimErrno) in
            try control.readSharedInfoPage(handle, domid: domid, frame: frame)
        }
        guard page.count == pageSize else {
            throw .inconsistent(operation: "read shared info frame \(hex(frame)) of domain \(domid)",
                                detail: "\(page.count) bytes, not a \(pageSize)-byte page")
        }
        return page
    }

    public func mapFrames(_ domid: DomID, _ mfns: UnsafeBufferPointer<UInt64>) throws(HostError) -> FrameMapping {
        if mfns.isEmpty {
            // privcmd cannot map zero pages; an empty batch needs no mapping at all.
            return FrameMapping(base: Self.emptyMappingBase, count: 0, errors: [], release: {})
        }
        guard let count = UInt32(exactly: mfns.count) else {
            throw .unsupported("mapping \(mfns.count) frames of domain \(domid) in one call")
        }
        let mapped = try call("map \(mfns.count) frames of domain \(domid)", goneAs: domid) { () throws(ShimErrno) in
            try control.mapFrames(handle, domid: domid, mfns: mfns)
        }
        guard mapped.errors.count == mfns.count else {
            unmapFrames(base: mapped.base, count: count, domid: domid)
            throw .inconsistent(operation: "map \(mfns.count) frames of domain \(domid)",
                                detail: "\(mapped.errors.count) per-frame error slots for \(mfns.count) frames")
        }
        // The closure holds self strongly: the mapping must be undone through the handle
        // that made it, so the handle stays open until the engine drops the last mapping.
        return FrameMapping(base: UnsafeRawPointer(mapped.base), count: mfns.count, errors: mapped.errors) {
            self.unmapFrames(base: mapped.base, count: count, domid: domid)
        }
    }

    public func mapM2P(maxMFN: UInt64) throws(HostError) -> M2PMapping {
        // One slot per MFN up to and including maxMFN; libxenctrl maps whole chunks, all
        // of them readable, and munmap needs that length back.
        let (wanted, overflow) = maxMFN.addingReportingOverflow(1)
        guard !overflow, let bytes = M2PLayout.mappedBytes(entries: wanted) else {
            throw .unsupported("an M2P table up to MFN \(hex(maxMFN))")
        }
        let base = try call("map the M2P table up to MFN \(hex(maxMFN))") { () throws(ShimErrno) in
            try control.mapM2P(handle, entries: wanted)
        }
        return M2PMapping(entries: UnsafeBufferPointer(start: base, count: bytes / 8)) {
            self.unmapM2P(base, bytes: bytes)
        }
    }

    public func domainName(_ domid: DomID) -> String? {
        do {
            let name = try control.domainName(handle, domid: domid)
            return name.isEmpty ? nil : name
        } catch {
            // ENOENT is the ordinary "no name in xenstore"; anything else is worth a trace
            // (no xenstored, permissions) but still only costs the report its name.
            if error.code != ENOENT {
                logger.debug("\(HostError.system(operation: "read the name of domain \(domid) from xenstore", errno: error.code))")
            }
            return nil
        }
    }

    // MARK: Translation

    static func domainInfo(_ raw: RawDomainInfo, caller: DomID? = nil) -> DomainInfo {
        let type: DomainType
        if !raw.flags.contains(.hvm) {
            type = .pv
        } else if raw.emulationFlags.isDisjoint(with: .legacyPlatform) {
            type = .pvh
        } else {
            type = .hvm
        }
        return DomainInfo(domid: raw.domid, type: type, dying: raw.flags.contains(.dying),
                          shutdown: raw.flags.contains(.shutdown), paused: raw.flags.contains(.paused),
                          totPages: raw.totPages, maxPages: raw.maxPages, sharedInfoFrame: raw.sharedInfoFrame,
                          uuid: raw.handle, isCaller: raw.domid == caller)
    }

    /// Runs one shim call, turning its errno into a HostError that names the attempt.
    /// ESRCH becomes `.domainNotFound` only where the caller says the domid is the subject.
    private func call<T>(_ operation: @autoclosure () -> String, goneAs domid: DomID? = nil,
                         _ body: () throws(ShimErrno) -> T) throws(HostError) -> T {
        do {
            return try body()
        } catch {
            if error.code == ESRCH, let domid { throw .domainNotFound(domid) }
            throw .system(operation: operation(), errno: error.code)
        }
    }

    // Release paths run from deinit and cannot throw; a failed unmap leaks address space
    // the operator should hear about.
    private func unmapFrames(base: UnsafeMutableRawPointer, count: UInt32, domid: DomID) {
        do {
            try control.unmapFrames(handle, base: base, count: count)
        } catch {
            logger.error("\(HostError.system(operation: "unmap \(count) frames of domain \(domid)", errno: error.code))")
        }
    }

    private func unmapM2P(_ base: UnsafePointer<UInt64>, bytes: Int) {
        do {
            try control.unmapM2P(base: base, mappedBytes: bytes)
        } catch {
            logger.error("\(HostError.system(operation: "unmap the M2P table (\(bytes) bytes)", errno: error.code))")
        }
    }

    /// Base of an empty FrameMapping: never dereferenced, since count is 0.
    private static var emptyMappingBase: UnsafeRawPointer { UnsafeRawPointer(bitPattern: pageSize)! }
}

private func hex(_ v: UInt64) -> String {
    "0x" + String(v, radix: 16)
}

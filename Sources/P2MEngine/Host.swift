// The engine's view of a Xen host: what it needs from libxenctrl, and nothing else.
// Real Xen (P2MXen), the simulator (P2MSimulator) and core files implement it.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

public typealias DomID = UInt32

public let pageSize = 4096
public let pageShift: UInt64 = 12

/// How Xen runs the guest. Only PV guests keep a P2M of their own.
public enum DomainType: String, Codable, Sendable {
    case pv
    case hvm
    case pvh
}

public struct DomainInfo: Sendable, Equatable {
    public var domid: DomID
    public var type: DomainType
    public var dying: Bool
    public var shutdown: Bool
    public var paused: Bool
    public var totPages: UInt64
    public var maxPages: UInt64
    public var sharedInfoFrame: UInt64
    /// The domain handle (UUID) as Xen reports it; a new UUID on a known domid means reuse.
    public var uuid: [UInt8]
    /// The domain the backend itself runs in (dom0, for xenp2md on Xen). Xen refuses
    /// foreign mappings of the calling domain, so its P2M cannot be read: the scanner
    /// reports it not applicable instead of failing.
    public var isCaller: Bool

    public init(domid: DomID, type: DomainType, dying: Bool = false, shutdown: Bool = false, paused: Bool = false,
                totPages: UInt64, maxPages: UInt64, sharedInfoFrame: UInt64, uuid: [UInt8], isCaller: Bool = false) {
        self.domid = domid
        self.type = type
        self.dying = dying
        self.shutdown = shutdown
        self.paused = paused
        self.totPages = totPages
        self.maxPages = maxPages
        self.sharedInfoFrame = sharedInfoFrame
        self.uuid = uuid
        self.isCaller = isCaller
    }

    public var uuidString: String {
        guard uuid.count == 16 else { return "" }
        let hex = uuid.map { b -> String in
            let s = String(b, radix: 16)
            return s.count == 1 ? "0" + s : s
        }
        return hex[0..<4].joined() + "-" + hex[4..<6].joined() + "-" + hex[6..<8].joined() + "-"
            + hex[8..<10].joined() + "-" + hex[10..<16].joined()
    }
}

/// Guest word width: decides entries per page (fpp) and the entry encoding.
public enum GuestWidth: Int, Codable, Sendable {
    case bits32 = 4
    case bits64 = 8

    public var bytes: Int { rawValue }
    /// Entries per page ("frames per page" in Xen's tools): 512 or 1024.
    public var fpp: Int { pageSize / rawValue }
    public var bits: Int { rawValue * 8 }
}

/// Errors a host reports. Every backend turns its failures into one of these.
public enum HostError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No Xen on this machine (privcmd missing).
    case noXen(path: String)
    /// The domain does not exist (any more).
    case domainNotFound(DomID)
    /// A system call failed; errno is kept for the operator.
    case system(operation: String, errno: Int32)
    /// The host cannot answer this question at all.
    case unsupported(String)
    /// The hypervisor refuses the interface this build's Xen libraries speak (a xenp2m
    /// built for another Xen release): nothing can be scanned, so the daemon does not start.
    case hypervisorNotDrivable(hypervisor: String, builtFor: String)
    /// The host answered, but with something that cannot be right (an M2P shorter than
    /// the host, a page of the wrong size, a zero max_page): the call and what was wrong.
    case inconsistent(operation: String, detail: String)

    /// How a domain that went away while it was being scanned is described everywhere
    /// (its report, the event, the logs).
    public static let vanishedDuringScan = "vanished during the scan"

    public var description: String {
        switch self {
        case .noXen(let path):
            return "no Xen here (\(path) missing): xenp2m needs a Xen dom0 with the privcmd driver loaded"
        case .domainNotFound(let d):
            return "domain \(d) does not exist (destroyed or never created)"
        case .system(let op, let e):
            return "\(op) failed: \(errnoName(e)) (\(String(cString: strerror(e))))"
        case .unsupported(let what):
            return "unsupported: \(what)"
        case .hypervisorNotDrivable(let hv, let built):
            return "hypervisor Xen \(hv) refuses the interface of this build (built for \(built)): install the xenp2m package built for Xen \(hv.split(separator: ".").prefix(2).joined(separator: "."))"
        case .inconsistent(let op, let detail):
            return "\(op): inconsistent answer from the host: \(detail)"
        }
    }

    public var isDomainGone: Bool {
        switch self {
        case .domainNotFound: return true
        case .system(_, let e): return e == ESRCH
        default: return false
        }
    }
}

func errnoName(_ e: Int32) -> String {
    switch e {
    case EPERM: return "EPERM"
    case ENOENT: return "ENOENT"
    case ESRCH: return "ESRCH"
    case EIO: return "EIO"
    case ENOMEM: return "ENOMEM"
    case EACCES: return "EACCES"
    case EFAULT: return "EFAULT"
    case EINVAL: return "EINVAL"
    case ERANGE: return "ERANGE"
    case EBUSY: return "EBUSY"
    default: return "errno \(e)"
    }
}

/// A batch of frames mapped read-only into one contiguous range.
/// Frames with a non-zero error must not be read. Unmapped when released.
public final class FrameMapping: @unchecked Sendable {
    public let base: UnsafeRawPointer
    public let count: Int
    /// 0, or the errno for that frame.
    public let errors: [Int32]
    /// Where each page is, for a backend that lends frames where they already are instead
    /// of laying them out from `base` (the simulator's zero-copy mode); nil otherwise.
    private let pages: [UnsafeRawPointer]?
    private let release: () -> Void

    public init(base: UnsafeRawPointer, count: Int, errors: [Int32], release: @escaping () -> Void) {
        precondition(errors.count == count)
        self.base = base
        self.count = count
        self.errors = errors
        self.pages = nil
        self.release = release
    }

    /// Frames that stay where they are: page i is `pages[i]` (`base` is the first page).
    public init(pages: [UnsafeRawPointer], errors: [Int32], release: @escaping () -> Void) {
        precondition(errors.count == pages.count && !pages.isEmpty)
        self.base = pages[0]
        self.count = pages.count
        self.errors = errors
        self.pages = pages
        self.release = release
    }

    deinit { release() }

    @inline(__always)
    public func page(_ i: Int) -> UnsafeRawPointer? {
        guard errors[i] == 0 else { return nil }
        if let pages { return pages[i] }
        return base + i &* pageSize
    }
}

/// Xen's machine-to-phys table, mapped read-only (8-byte entries).
public final class M2PMapping: @unchecked Sendable {
    public let entries: UnsafeBufferPointer<UInt64>
    private let release: () -> Void

    public init(entries: UnsafeBufferPointer<UInt64>, release: @escaping () -> Void) {
        self.entries = entries
        self.release = release
    }

    deinit { release() }
}

/// The abstract machine the engine walks. Calls are batched by design: the engine
/// never asks for one guest page at a time in its hot paths.
public protocol P2MHost: AnyObject, Sendable {
    /// Human name of the backend, for reports ("xen", "sim", "core").
    var backendName: String { get }
    func listDomains() throws(HostError) -> [DomainInfo]
    func domainInfo(_ domid: DomID) throws(HostError) -> DomainInfo
    func guestWidth(_ domid: DomID) throws(HostError) -> GuestWidth
    /// xc_domain_nr_gpfns: for PV guests Xen derives it from the published max_pfn.
    func nrGpfns(_ domid: DomID) throws(HostError) -> UInt64
    /// Highest valid MFN on the host (xc_maximum_ram_page).
    func maxMFN() throws(HostError) -> UInt64
    /// The raw 4096-byte shared-info page of the domain.
    func sharedInfoPage(_ domid: DomID, frame: UInt64) throws(HostError) -> [UInt8]
    /// Maps frames of the domain read-only, with a per-frame error.
    func mapFrames(_ domid: DomID, _ mfns: UnsafeBufferPointer<UInt64>) throws(HostError) -> FrameMapping
    func mapM2P(maxMFN: UInt64) throws(HostError) -> M2PMapping
    func domainName(_ domid: DomID) -> String?
    /// CPU seconds this process has spent inside the backend's own calls, where the
    /// backend can tell (the simulator does; on real Xen the cost is the kernel's and
    /// the hypervisor's): lets a benchmark separate xenp2m's cost from its host's.
    var backendCPUSeconds: Double? { get }
}

extension P2MHost {
    public var backendCPUSeconds: Double? { nil }
}

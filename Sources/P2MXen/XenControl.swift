// The mocking seam between XenHost and the C shim: one method per xp2m_* function,
// in Swift types, failing with the shim's positive errno. ShimControl is the only
// code in this module that calls CXenCtrl, so tests can replace all of Xen with a fake.

import CXenCtrl

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An open shim handle (`xp2m_handle *`). Fakes may use any non-nil bit pattern.
typealias XenHandle = OpaquePointer

/// The shim's log callback, spelled without CXenCtrl types so fakes can call it.
typealias XenLogCallback = @convention(c) (
    _ context: UnsafeMutableRawPointer?, _ level: Int32, _ errnoval: Int32,
    _ xenContext: UnsafePointer<CChar>?, _ message: UnsafePointer<CChar>?
) -> Void

/// A positive errno returned by a shim function.
struct ShimErrno: Error, Equatable, Sendable {
    var code: Int32
    init(_ code: Int32) { self.code = code }
}

/// xp2m_dominfo in Swift types.
struct RawDomainInfo: Equatable, Sendable {
    var domid: UInt32
    var flags: DomainFlags
    var shutdownReason: UInt32 = 0
    var onlineVCPUs: UInt32 = 1
    var totPages: UInt64
    var maxPages: UInt64
    var sharedInfoFrame: UInt64
    /// XP2M_EMU_*: the devices Xen emulates for an HVM container (0 for PV).
    var emulationFlags: EmulationFlags = []
    var handle: [UInt8]
}

/// XP2M_DOM_* flags.
struct DomainFlags: OptionSet, Sendable {
    let rawValue: UInt32
    static let dying = DomainFlags(rawValue: UInt32(XP2M_DOM_DYING))
    static let hvm = DomainFlags(rawValue: UInt32(XP2M_DOM_HVM))
    static let shutdown = DomainFlags(rawValue: UInt32(XP2M_DOM_SHUTDOWN))
    static let paused = DomainFlags(rawValue: UInt32(XP2M_DOM_PAUSED))
    static let running = DomainFlags(rawValue: UInt32(XP2M_DOM_RUNNING))
}

/// XP2M_EMU_* (Xen's XEN_X86_EMU_*): what Xen emulates for an HVM container.
struct EmulationFlags: OptionSet, Sendable, Equatable {
    let rawValue: UInt32
    static let lapic = EmulationFlags(rawValue: UInt32(XP2M_EMU_LAPIC))
    static let hpet = EmulationFlags(rawValue: UInt32(XP2M_EMU_HPET))
    static let pm = EmulationFlags(rawValue: UInt32(XP2M_EMU_PM))
    static let rtc = EmulationFlags(rawValue: UInt32(XP2M_EMU_RTC))
    static let ioapic = EmulationFlags(rawValue: UInt32(XP2M_EMU_IOAPIC))
    static let pic = EmulationFlags(rawValue: UInt32(XP2M_EMU_PIC))
    static let vga = EmulationFlags(rawValue: UInt32(XP2M_EMU_VGA))
    static let iommu = EmulationFlags(rawValue: UInt32(XP2M_EMU_IOMMU))
    static let pit = EmulationFlags(rawValue: UInt32(XP2M_EMU_PIT))

    /// The emulated legacy PC platform: a guest with none of it is PVH. Only these devices
    /// decide: a PVH dom0 also gets an emulated IO-APIC and vPCI, so "nothing but the
    /// LAPIC" would call it HVM.
    static let legacyPlatform: EmulationFlags = [.hpet, .pm, .rtc, .pic, .vga, .pit]
}

/// XP2M_LOG_* levels (xentoollog's XTL_* values).
enum XenLogLevel {
    static let debug = Int32(XP2M_LOG_DEBUG)
    static let verbose = Int32(XP2M_LOG_VERBOSE)
    static let detail = Int32(XP2M_LOG_DETAIL)
    static let progress = Int32(XP2M_LOG_PROGRESS)
    static let info = Int32(XP2M_LOG_INFO)
    static let notice = Int32(XP2M_LOG_NOTICE)
    static let warn = Int32(XP2M_LOG_WARN)
    static let error = Int32(XP2M_LOG_ERROR)
    static let critical = Int32(XP2M_LOG_CRITICAL)
}

struct MappedFrames {
    var base: UnsafeMutableRawPointer
    /// 0 or a positive errno per frame.
    var errors: [Int32]
}

/// How libxenctrl's xc_map_m2p lays out the M2P mapping: whole chunks of 2 MiB (one L2
/// page table's reach, M2P_SHIFT in xc_private.h) of 8-byte entries, so the mapping is the
/// entries asked for rounded up to a chunk, and all of it is readable.
enum M2PLayout {
    static let chunkBytes: UInt64 = 1 << 21

    /// nil when the size does not fit this address space.
    static func mappedBytes(entries: UInt64) -> Int? {
        let (bytes, o1) = entries.multipliedReportingOverflow(by: 8)
        let (padded, o2) = bytes.addingReportingOverflow(chunkBytes - 1)
        guard !o1, !o2 else { return nil }
        return Int(exactly: padded & ~(chunkBytes - 1))
    }
}

/// One method per xp2m_* function. Implementations must be callable from any thread.
protocol XenControlInterface: Sendable {
    func open(log: XenLogCallback?, context: UnsafeMutableRawPointer?) throws(ShimErrno) -> XenHandle
    func close(_ h: XenHandle)
    func listDomains(_ h: XenHandle, first: UInt32, max: UInt32) throws(ShimErrno) -> [RawDomainInfo]
    func domainInfo(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> RawDomainInfo
    func guestWidth(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> UInt32
    func nrGpfns(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> UInt64
    /// Xen's max_page: one past the host's last frame.
    func maxRAMPage(_ h: XenHandle) throws(ShimErrno) -> UInt64
    func readSharedInfoPage(_ h: XenHandle, domid: UInt32, frame: UInt64) throws(ShimErrno) -> [UInt8]
    func mapFrames(_ h: XenHandle, domid: UInt32, mfns: UnsafeBufferPointer<UInt64>) throws(ShimErrno) -> MappedFrames
    func unmapFrames(_ h: XenHandle, base: UnsafeMutableRawPointer, count: UInt32) throws(ShimErrno)
    /// Maps the M2P for `entries` MFNs; the mapping is M2PLayout.mappedBytes long.
    func mapM2P(_ h: XenHandle, entries: UInt64) throws(ShimErrno) -> UnsafePointer<UInt64>
    func unmapM2P(base: UnsafePointer<UInt64>, mappedBytes: Int) throws(ShimErrno)
    func domainName(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> String
    /// A key of the calling domain's own xenstore directory ("domid": which domain we are).
    func ownXenstoreValue(_ h: XenHandle, key: String) throws(ShimErrno) -> String
    func hypervisorVersion(_ h: XenHandle) throws(ShimErrno) -> XenVersion
    func checkDomctl(_ h: XenHandle) throws(ShimErrno)
}

extension XenControlInterface {
    /// Fakes play a hypervisor of the release the shim was built for, unless they say otherwise.
    func hypervisorVersion(_ h: XenHandle) throws(ShimErrno) -> XenVersion { XenVersion.built }
    func checkDomctl(_ h: XenHandle) throws(ShimErrno) {}
}

/// The real thing: calls libxenctrl through CXenCtrl.
struct ShimControl: XenControlInterface {
    /// Longer than any xenstore value (XENSTORE_PAYLOAD_MAX is 4096 bytes).
    static let nameBufferSize = 4097

    @inline(__always)
    private func check(_ rc: Int32) throws(ShimErrno) {
        if rc != 0 { throw ShimErrno(rc) }
    }

    func open(log: XenLogCallback?, context: UnsafeMutableRawPointer?) throws(ShimErrno) -> XenHandle {
        var h: XenHandle?
        try check(xp2m_open(&h, log, context))
        // The shim writes the handle on success; a nil here would be a shim bug, not Xen's.
        guard let h else { throw ShimErrno(EIO) }
        return h
    }

    func close(_ h: XenHandle) {
        xp2m_close(h)
    }

    func listDomains(_ h: XenHandle, first: UInt32, max: UInt32) throws(ShimErrno) -> [RawDomainInfo] {
        var buf = [xp2m_dominfo](repeating: xp2m_dominfo(), count: Int(max))
        var n: UInt32 = 0
        try check(buf.withUnsafeMutableBufferPointer { xp2m_list_domains(h, first, $0.baseAddress, max, &n) })
        return buf.prefix(Int(Swift.min(n, max))).map(RawDomainInfo.init)
    }

    func domainInfo(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> RawDomainInfo {
        var info = xp2m_dominfo()
        try check(xp2m_domain_info(h, domid, &info))
        return RawDomainInfo(info)
    }

    func guestWidth(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> UInt32 {
        var w: UInt32 = 0
        try check(xp2m_guest_width(h, domid, &w))
        return w
    }

    func nrGpfns(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> UInt64 {
        var n: UInt64 = 0
        try check(xp2m_nr_gpfns(h, domid, &n))
        return n
    }

    func maxRAMPage(_ h: XenHandle) throws(ShimErrno) -> UInt64 {
        var m: UInt64 = 0
        try check(xp2m_max_ram_page(h, &m))
        return m
    }

    func readSharedInfoPage(_ h: XenHandle, domid: UInt32, frame: UInt64) throws(ShimErrno) -> [UInt8] {
        var page = [UInt8](repeating: 0, count: 4096)
        try check(page.withUnsafeMutableBufferPointer { xp2m_read_shared_info_page(h, domid, frame, $0.baseAddress) })
        return page
    }

    func mapFrames(_ h: XenHandle, domid: UInt32, mfns: UnsafeBufferPointer<UInt64>) throws(ShimErrno) -> MappedFrames {
        guard let first = mfns.baseAddress, let n = UInt32(exactly: mfns.count), n > 0 else { throw ShimErrno(EINVAL) }
        var errors = [Int32](repeating: 0, count: mfns.count)
        var base: UnsafeMutableRawPointer?
        try check(errors.withUnsafeMutableBufferPointer { xp2m_map_frames(h, domid, first, n, $0.baseAddress, &base) })
        guard let base else { throw ShimErrno(EFAULT) }
        return MappedFrames(base: base, errors: errors)
    }

    func unmapFrames(_ h: XenHandle, base: UnsafeMutableRawPointer, count: UInt32) throws(ShimErrno) {
        try check(xp2m_unmap_frames(h, base, count))
    }

    func mapM2P(_ h: XenHandle, entries: UInt64) throws(ShimErrno) -> UnsafePointer<UInt64> {
        var base: UnsafePointer<UInt64>?
        try check(xp2m_map_m2p(h, entries, &base))
        guard let base else { throw ShimErrno(EFAULT) }
        return base
    }

    func unmapM2P(base: UnsafePointer<UInt64>, mappedBytes: Int) throws(ShimErrno) {
        try check(xp2m_unmap_m2p(base, mappedBytes))
    }

    func domainName(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> String {
        var buf = [CChar](repeating: 0, count: Self.nameBufferSize)
        try check(buf.withUnsafeMutableBufferPointer { xp2m_domain_name(h, domid, $0.baseAddress, $0.count) })
        let bytes = buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    func ownXenstoreValue(_ h: XenHandle, key: String) throws(ShimErrno) -> String {
        var buf = [CChar](repeating: 0, count: Self.nameBufferSize)
        try check(buf.withUnsafeMutableBufferPointer { xp2m_own_xenstore_value(h, key, $0.baseAddress, $0.count) })
        let bytes = buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    func hypervisorVersion(_ h: XenHandle) throws(ShimErrno) -> XenVersion {
        var major: UInt32 = 0, minor: UInt32 = 0
        var extra = [CChar](repeating: 0, count: 64)
        try check(extra.withUnsafeMutableBufferPointer { xp2m_hypervisor_version(h, &major, &minor, $0.baseAddress, $0.count) })
        let bytes = extra.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return XenVersion(major: major, minor: minor, extra: String(decoding: bytes, as: UTF8.self))
    }

    func checkDomctl(_ h: XenHandle) throws(ShimErrno) {
        try check(xp2m_check_domctl(h))
    }
}

/// A Xen version: the running hypervisor's, or the release the shim was built against.
public struct XenVersion: Equatable, Sendable, CustomStringConvertible {
    public var major: UInt32
    public var minor: UInt32
    /// ".4", ".5-pre" for a hypervisor; empty for a build's release series.
    public var extra: String
    public var series: String { "\(major).\(minor)" }
    public var description: String { series + extra }

    /// The Xen release whose libxen-dev this build's shim was compiled against.
    public static let built: XenVersion = {
        let s = String(cString: xp2m_built_xen_series()).split(separator: ".").compactMap { UInt32($0) }
        return XenVersion(major: s.first ?? 0, minor: s.dropFirst().first ?? 0, extra: "")
    }()
    /// That release's domctl interface version (Xen refuses any other).
    public static let builtDomctlInterface: UInt32 = xp2m_built_domctl_interface()
    /// "Xen 4.20 (domctl interface 0x17)": what `--version` prints.
    public static var builtInterface: String {
        "Xen \(built.series) (domctl interface 0x\(String(builtDomctlInterface, radix: 16)))"
    }
}

extension RawDomainInfo {
    init(_ c: xp2m_dominfo) {
        self.init(domid: c.domid, flags: DomainFlags(rawValue: c.flags), shutdownReason: c.shutdown_reason,
                  onlineVCPUs: c.nr_online_vcpus, totPages: c.tot_pages, maxPages: c.max_pages,
                  sharedInfoFrame: c.shared_info_frame, emulationFlags: EmulationFlags(rawValue: c.emulation_flags),
                  handle: withUnsafeBytes(of: c.handle) { Array($0) })
    }
}

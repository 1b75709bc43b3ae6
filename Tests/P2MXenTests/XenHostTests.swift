// XenHost over a fake XenControlInterface: every errno and value translation, paging,
// mapping lifetimes and log routing, without a hypervisor.

import CXenCtrl
import Foundation
import Logging
import P2MEngine
import Testing
@testable import P2MXen
import P2MTestSupport

private func makeHost(_ fake: FakeControl, capture: LogCapture = LogCapture()) throws -> XenHost {
    try XenHost(control: fake, logger: capture.logger())
}

@Suite("XenHost: opening and closing")
struct XenHostOpenTests {
    @Test("ENOENT from open is .noXen at /proc/xen/privcmd")
    func enoentIsNoXen() {
        let fake = FakeControl()
        fake.failures[.open] = ENOENT
        let error = #expect(throws: HostError.self) { try makeHost(fake) }
        #expect(error == .noXen(path: "/proc/xen/privcmd"))
        #expect(error?.description.contains("no Xen here (/proc/xen/privcmd missing)") == true)
        #expect(fake.closeCount == 0)
    }

    @Test("EACCES and EPERM from open tell the operator to run as root in dom0", arguments: [EACCES, EPERM])
    func permissionHint(code: Int32) {
        let fake = FakeControl()
        fake.failures[.open] = code
        let error = #expect(throws: HostError.self) { try makeHost(fake) }
        #expect(error == .system(operation: "open libxenctrl (run as root in dom0)", errno: code))
    }

    @Test("other open errnos are .system without the root hint", arguments: [ENOMEM, EIO, EBUSY])
    func otherOpenErrors(code: Int32) {
        let fake = FakeControl()
        fake.failures[.open] = code
        let error = #expect(throws: HostError.self) { try makeHost(fake) }
        #expect(error == .system(operation: "open libxenctrl", errno: code))
    }

    @Test("the handle is closed exactly once, when the host goes away")
    func closeOnDeinit() throws {
        let fake = FakeControl()
        do {
            let host = try makeHost(fake)
            #expect(host.backendName == "xen")
            #expect(fake.closeCount == 0)
        }
        #expect(fake.closeCount == 1)
        #expect(fake.wrongHandleUses == 0)
    }
}

@Suite("XenHost: errno translation")
struct XenHostErrnoTests {
    enum DomainCall: String, CaseIterable, CustomTestStringConvertible {
        case domainInfo, guestWidth, nrGpfns, sharedInfo, mapFrames
        var op: FakeControl.Op {
            switch self {
            case .domainInfo: .domainInfo
            case .guestWidth: .guestWidth
            case .nrGpfns: .nrGpfns
            case .sharedInfo: .sharedInfo
            case .mapFrames: .mapFrames
            }
        }
        var testDescription: String { rawValue }

        func run(_ host: XenHost, _ domid: DomID) throws(HostError) {
            switch self {
            case .domainInfo: _ = try host.domainInfo(domid)
            case .guestWidth: _ = try host.guestWidth(domid)
            case .nrGpfns: _ = try host.nrGpfns(domid)
            case .sharedInfo: _ = try host.sharedInfoPage(domid, frame: 0xabc07)
            case .mapFrames:
                let mfns: [UInt64] = [1, 2, 3]
                _ = try mfns.withUnsafeBufferPointer { (b) throws(HostError) in try host.mapFrames(domid, b) }
            }
        }
    }

    @Test("ESRCH from domainInfo and mapFrames is .domainNotFound", arguments: [DomainCall.domainInfo, .mapFrames])
    func esrchIsDomainNotFound(call: DomainCall) throws {
        let fake = FakeControl()
        fake.domains = [raw(7)]
        fake.failures[call.op] = ESRCH
        let host = try makeHost(fake)
        let error = #expect(throws: HostError.self) { try call.run(host, 7) }
        #expect(error == .domainNotFound(7))
        #expect(error?.isDomainGone == true)
    }

    @Test("a domid the fake does not know is .domainNotFound")
    func unknownDomain() throws {
        let fake = FakeControl()
        fake.domains = [raw(1), raw(3)]
        let host = try makeHost(fake)
        #expect(throws: HostError.domainNotFound(2)) { try host.domainInfo(2) }
    }

    @Test("ESRCH elsewhere stays .system but still reads as the domain being gone",
          arguments: [DomainCall.guestWidth, .nrGpfns, .sharedInfo])
    func esrchElsewhere(call: DomainCall) throws {
        let fake = FakeControl()
        fake.domains = [raw(7)]
        fake.failures[call.op] = ESRCH
        let host = try makeHost(fake)
        let error = #expect(throws: HostError.self) { try call.run(host, 7) }
        guard case .system(let operation, let code) = error else {
            Issue.record("expected .system, got \(String(describing: error))")
            return
        }
        #expect(code == ESRCH)
        #expect(operation.contains("domain 7"))
        #expect(error?.isDomainGone == true)
    }

    @Test("EPERM, EFAULT and ENOMEM become .system with that errno and an operation naming the domid",
          arguments: DomainCall.allCases, [EPERM, EFAULT, ENOMEM])
    func systemErrors(call: DomainCall, code: Int32) throws {
        let fake = FakeControl()
        fake.domains = [raw(42)]
        fake.failures[call.op] = code
        let host = try makeHost(fake)
        let error = #expect(throws: HostError.self) { try call.run(host, 42) }
        guard case .system(let operation, let got) = error else {
            Issue.record("expected .system, got \(String(describing: error))")
            return
        }
        #expect(got == code)
        #expect(operation.contains("domain 42"), "operation was \"\(operation)\"")
        #expect(error?.isDomainGone == false)
    }

    @Test("host-wide calls name what failed")
    func hostWideErrors() throws {
        let fake = FakeControl()
        fake.failures[.maxRAMPage] = EPERM
        fake.failures[.mapM2P] = ENOMEM
        fake.failures[.listDomains] = EFAULT
        let host = try makeHost(fake)
        #expect(throws: HostError.system(operation: "get the host's maximum RAM page", errno: EPERM)) {
            try host.maxMFN()
        }
        #expect(throws: HostError.system(operation: "map the M2P table up to MFN 0xfffff", errno: ENOMEM)) {
            try host.mapM2P(maxMFN: 0xfffff)
        }
        #expect(throws: HostError.system(operation: "list domains from domid 0", errno: EFAULT)) {
            try host.listDomains()
        }
    }

    @Test("a max_page of 0 is refused as inconsistent, never wrapped to the highest MFN there is")
    func zeroMaxPage() throws {
        let fake = FakeControl()
        fake.maxRAMPageValue = 0
        let host = try makeHost(fake)
        let error = #expect(throws: HostError.self) { try host.maxMFN() }
        guard case .inconsistent(let operation, let detail) = error else {
            Issue.record("expected .inconsistent, got \(String(describing: error))")
            return
        }
        #expect(operation == "get the host's maximum RAM page" && detail.contains("max_page 0"))
    }

    @Test("an M2P up to the last MFN there is cannot be asked for (the slot count would wrap)")
    func m2pOverflow() throws {
        let fake = FakeControl()
        let host = try makeHost(fake)
        #expect(throws: HostError.unsupported("an M2P table up to MFN 0xffffffffffffffff")) {
            try host.mapM2P(maxMFN: .max)
        }
        #expect(fake.count(.mapM2P) == 0)
    }

    @Test("a failing operation's description carries the errno name")
    func description() throws {
        let fake = FakeControl()
        fake.failures[.guestWidth] = EPERM
        let host = try makeHost(fake)
        let error = #expect(throws: HostError.self) { try host.guestWidth(9) }
        #expect(error?.description.hasPrefix("get guest width of domain 9 failed: EPERM") == true)
    }
}

@Suite("XenHost: values")
struct XenHostValueTests {
    @Test("guest width 4 is 32-bit, 8 is 64-bit", arguments: [(UInt32(4), GuestWidth.bits32), (8, .bits64)])
    func widths(width: UInt32, expected: GuestWidth) throws {
        let fake = FakeControl()
        fake.width = width
        let host = try makeHost(fake)
        #expect(try host.guestWidth(3) == expected)
    }

    @Test("any other guest width is .unsupported, naming the width", arguments: [UInt32(0), 2, 16, 0xffff_ffff])
    func otherWidths(width: UInt32) throws {
        let fake = FakeControl()
        fake.width = width
        let host = try makeHost(fake)
        let error = #expect(throws: HostError.self) { try host.guestWidth(3) }
        guard case .unsupported(let what) = error else {
            Issue.record("expected .unsupported, got \(String(describing: error))")
            return
        }
        #expect(what.contains("\(width) bytes"))
        #expect(what.contains("domain 3"))
    }

    // What xl creates: HVM emulates the whole legacy platform (+ IOMMU with passthrough);
    // PVH only the LAPIC; a PVH dom0 also the IO-APIC and vPCI; PV reports nothing.
    static let typeCases: [(DomainFlags, EmulationFlags, DomainType)] = [
        ([.hvm], [.lapic, .hpet, .pm, .rtc, .ioapic, .pic, .vga, .pit], .hvm),
        ([.hvm], [.lapic, .hpet, .pm, .rtc, .ioapic, .pic, .vga, .iommu, .pit], .hvm),
        ([.hvm], [.lapic, .rtc], .hvm),
        ([.hvm], [.lapic], .pvh), ([.hvm], [], .pvh), ([.hvm], [.lapic, .ioapic, .iommu], .pvh),
        ([], [], .pv), ([.running], [], .pv),
        // A PV domain's arch_config is not about emulation: never PVH or HVM because of it.
        ([], [.lapic, .pic, .vga], .pv),
    ]

    @Test("HVM flag and emulated devices give the domain type", arguments: typeCases)
    func domainTypes(flags: DomainFlags, emulation: EmulationFlags, expected: DomainType) throws {
        let fake = FakeControl()
        var d = raw(5, flags)
        d.emulationFlags = emulation
        fake.domains = [d]
        let host = try makeHost(fake)
        #expect(try host.domainInfo(5).type == expected)
    }

    @Test("dying, shutdown and paused flags and the counters carry over")
    func stateFlags() throws {
        let fake = FakeControl()
        fake.domains = [raw(1, [.dying]), raw(2, [.shutdown, .paused]), raw(3, [.running])]
        let host = try makeHost(fake)
        let d1 = try host.domainInfo(1), d2 = try host.domainInfo(2), d3 = try host.domainInfo(3)
        #expect(d1.dying && !d1.shutdown && !d1.paused)
        #expect(!d2.dying && d2.shutdown && d2.paused)
        #expect(!d3.dying && !d3.shutdown && !d3.paused)
        #expect(d2.totPages == 0x10000 && d2.maxPages == 0x20000 && d2.sharedInfoFrame == 0xabc02)
    }

    @Test("the 16 handle bytes are the UUID")
    func uuid() throws {
        let bytes: [UInt8] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
        let fake = FakeControl()
        fake.domains = [raw(4, handle: bytes)]
        let host = try makeHost(fake)
        let info = try host.domainInfo(4)
        #expect(info.uuid == bytes)
        #expect(info.uuidString == "00112233-4455-6677-8899-aabbccddeeff")
        #expect(try host.listDomains().first?.uuidString == "00112233-4455-6677-8899-aabbccddeeff")
    }

    @Test("ShimControl's xp2m_dominfo conversion keeps every field and all 16 handle bytes")
    func rawConversion() {
        var c = xp2m_dominfo()
        c.domid = 9
        c.flags = UInt32(XP2M_DOM_HVM | XP2M_DOM_PAUSED)
        c.shutdown_reason = 3
        c.nr_online_vcpus = 2
        c.tot_pages = 0x1000
        c.max_pages = 0x2000
        c.shared_info_frame = 0xfeed
        c.emulation_flags = UInt32(XP2M_EMU_LAPIC | XP2M_EMU_VGA)
        withUnsafeMutableBytes(of: &c.handle) { for i in 0..<16 { $0[i] = UInt8(0xf0 + i) } }
        let r = RawDomainInfo(c)
        #expect(r == RawDomainInfo(domid: 9, flags: [.hvm, .paused], shutdownReason: 3, onlineVCPUs: 2, totPages: 0x1000,
                                   maxPages: 0x2000, sharedInfoFrame: 0xfeed, emulationFlags: [.lapic, .vga], handle: (0..<16).map { UInt8(0xf0 + $0) }))
        let info = XenHost.domainInfo(r)
        #expect(info.type == .hvm && info.paused)
        #expect(info.uuidString == "f0f1f2f3-f4f5-f6f7-f8f9-fafbfcfdfeff")
    }

    @Test("maxMFN is Xen's max_page less one; nrGpfns and the shared-info page pass through")
    func passThrough() throws {
        let fake = FakeControl()
        fake.maxRAMPageValue = 0x123456
        fake.nrGpfnsValue = 0x58000
        let host = try makeHost(fake)
        #expect(try host.maxMFN() == 0x123455)
        #expect(try host.nrGpfns(6) == 0x58000)
        let page = try host.sharedInfoPage(6, frame: 0x77)
        #expect(page.count == 4096)
        #expect(page[0] == 6 && page[1] == 0x77)
    }

    @Test("domain names: the xenstore value, or nil when there is none")
    func names() throws {
        let fake = FakeControl()
        fake.names = [0: "Domain-0", 3: "web01", 4: ""]
        let host = try makeHost(fake)
        #expect(host.domainName(0) == "Domain-0")
        #expect(host.domainName(3) == "web01")
        #expect(host.domainName(4) == nil)
        #expect(host.domainName(5) == nil)
        fake.failures[.domainName] = ENOTCONN
        #expect(host.domainName(3) == nil)
    }
}

@Suite("XenHost: listDomains paging")
struct XenHostListTests {
    @Test("600 domains come back whole, in chunks of 256 starting after the last domid",
          arguments: [1, 5])
    func pagesAcrossChunks(stride: Int) throws {
        let fake = FakeControl()
        fake.domains = (0..<600).map { raw(UInt32($0 * stride)) }
        let host = try makeHost(fake)
        let list = try host.listDomains()
        #expect(list.map(\.domid) == (0..<600).map { UInt32($0 * stride) })
        #expect(fake.listCalls.map(\.first) == [0, UInt32(255 * stride + 1), UInt32(511 * stride + 1)])
        #expect(fake.listCalls.allSatisfy { $0.max == XenHost.listChunk })
    }

    @Test("exactly one full chunk needs a second, empty call; a short chunk ends it", arguments: [0, 1, 255, 256, 512])
    func boundaries(count: Int) throws {
        let fake = FakeControl()
        fake.domains = (0..<count).map { raw(UInt32($0)) }
        let host = try makeHost(fake)
        #expect(try host.listDomains().count == count)
        #expect(fake.listCalls.count == count / 256 + 1)
    }

    @Test("an error on a later chunk names where the listing stopped")
    func laterChunkFails() throws {
        final class FailSecond: XenControlInterface, @unchecked Sendable {
            let inner = FakeControl()
            var calls = 0
            func open(log: XenLogCallback?, context: UnsafeMutableRawPointer?) throws(ShimErrno) -> XenHandle {
                try inner.open(log: log, context: context)
            }
            func close(_ h: XenHandle) { inner.close(h) }
            func listDomains(_ h: XenHandle, first: UInt32, max: UInt32) throws(ShimErrno) -> [RawDomainInfo] {
                calls += 1
                if calls == 2 { throw ShimErrno(EFAULT) }
                return try inner.listDomains(h, first: first, max: max)
            }
            func domainInfo(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> RawDomainInfo { try inner.domainInfo(h, domid: domid) }
            func guestWidth(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> UInt32 { try inner.guestWidth(h, domid: domid) }
            func nrGpfns(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> UInt64 { try inner.nrGpfns(h, domid: domid) }
            func maxRAMPage(_ h: XenHandle) throws(ShimErrno) -> UInt64 { try inner.maxRAMPage(h) }
            func readSharedInfoPage(_ h: XenHandle, domid: UInt32, frame: UInt64) throws(ShimErrno) -> [UInt8] {
                try inner.readSharedInfoPage(h, domid: domid, frame: frame)
            }
            func mapFrames(_ h: XenHandle, domid: UInt32, mfns: UnsafeBufferPointer<UInt64>) throws(ShimErrno) -> MappedFrames {
                try inner.mapFrames(h, domid: domid, mfns: mfns)
            }
            func unmapFrames(_ h: XenHandle, base: UnsafeMutableRawPointer, count: UInt32) throws(ShimErrno) {
                try inner.unmapFrames(h, base: base, count: count)
            }
            func mapM2P(_ h: XenHandle, entries: UInt64) throws(ShimErrno) -> UnsafePointer<UInt64> { try inner.mapM2P(h, entries: entries) }
            func unmapM2P(base: UnsafePointer<UInt64>, mappedBytes: Int) throws(ShimErrno) {
                try inner.unmapM2P(base: base, mappedBytes: mappedBytes)
            }
            func domainName(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> String { try inner.domainName(h, domid: domid) }
            func ownXenstoreValue(_ h: XenHandle, key: String) throws(ShimErrno) -> String { try inner.ownXenstoreValue(h, key: key) }
        }
        let control = FailSecond()
        control.inner.domains = (0..<300).map { raw(UInt32($0)) }
        let host = try XenHost(control: control, logger: LogCapture().logger())
        #expect(throws: HostError.system(operation: "list domains from domid 256", errno: EFAULT)) {
            try host.listDomains()
        }
    }
}

@Suite("XenHost: mappings")
struct XenHostMappingTests {
    @Test("releasing a FrameMapping unmaps it exactly once, with the base and count it was mapped with")
    func frameMappingReleasesOnce() throws {
        let fake = FakeControl()
        fake.frameErrors = [0x2002: EFAULT]
        let host = try makeHost(fake)
        let mfns: [UInt64] = [0x1001, 0x2002, 0x3003]
        var mapping: FrameMapping? = try mfns.withUnsafeBufferPointer { (b) throws(HostError) in try host.mapFrames(8, b) }
        #expect(fake.count(.unmapFrames) == 0)
        let base = try #require(mapping).base
        #expect(mapping?.count == 3)
        #expect(mapping?.errors == [0, EFAULT, 0])
        #expect(mapping?.page(1) == nil)
        #expect(mapping?.page(0)?.loadUnaligned(as: UInt64.self) == 0x1001)
        #expect(mapping?.page(2)?.loadUnaligned(as: UInt64.self) == 0x3003)
        mapping = nil
        #expect(fake.count(.unmapFrames) == 1)
        #expect(fake.unmapFrameCalls.first?.base == UnsafeMutableRawPointer(mutating: base))
        #expect(fake.unmapFrameCalls.first?.count == 3)
        #expect(fake.liveFrameMappings.isEmpty)
        #expect(fake.wrongHandleUses == 0)
    }

    @Test("a mapping keeps the handle open after the host itself is dropped")
    func mappingOutlivesHost() throws {
        let fake = FakeControl()
        var host: XenHost? = try makeHost(fake)
        var mapping: FrameMapping? = try [UInt64(5)].withUnsafeBufferPointer { (b) throws(HostError) in
            try host!.mapFrames(1, b)
        }
        host = nil
        #expect(fake.closeCount == 0)
        #expect(mapping?.count == 1)
        mapping = nil
        #expect(fake.count(.unmapFrames) == 1)
        #expect(fake.closeCount == 1)
        #expect(fake.calls.last == .unmapFrames)
    }

    @Test("an empty batch maps nothing and unmaps nothing")
    func emptyBatch() throws {
        let fake = FakeControl()
        let host = try makeHost(fake)
        var mapping: FrameMapping? = try [UInt64]().withUnsafeBufferPointer { (b) throws(HostError) in try host.mapFrames(1, b) }
        #expect(mapping?.count == 0)
        mapping = nil
        #expect(fake.count(.mapFrames) == 0)
        #expect(fake.count(.unmapFrames) == 0)
    }

    @Test("a failed unmap is logged as an error, not thrown or printed")
    func failedUnmapIsLogged() throws {
        let fake = FakeControl()
        let capture = LogCapture()
        let host = try makeHost(fake, capture: capture)
        fake.failures[.unmapFrames] = EINVAL
        var mapping: FrameMapping? = try [UInt64(5), 6].withUnsafeBufferPointer { (b) throws(HostError) in
            try host.mapFrames(12, b)
        }
        #expect(mapping != nil)
        mapping = nil
        let errors = capture.records.filter { $0.level == .error }
        #expect(errors.count == 1)
        #expect(errors.first?.message.hasPrefix("unmap 2 frames of domain 12 failed: EINVAL") == true)
    }

    @Test("the M2P mapping exposes the entries and unmaps exactly once")
    func m2pMapping() throws {
        let fake = FakeControl()
        let host = try makeHost(fake)
        var m2p: M2PMapping? = try host.mapM2P(maxMFN: 4000)
        // 4001 MFNs asked for; libxenctrl maps one whole 2 MiB chunk, all of it readable.
        #expect(fake.mapM2PRequests == [4001])
        #expect(m2p?.entries.count == 262_144)
        #expect(m2p?.entries[100] == 300)
        let base = m2p?.entries.baseAddress
        #expect(fake.unmapM2PCalls.isEmpty)
        m2p = nil
        #expect(fake.unmapM2PCalls.count == 1)
        #expect(fake.unmapM2PCalls.first?.base == base)
        #expect(fake.unmapM2PCalls.first?.bytes == 2 << 20)
    }
}

@Suite("XenHost: libxenctrl logging")
struct XenHostLogTests {
    @Test("xentoollog levels map onto swift-log levels",
          arguments: [(Int32(0), Logger.Level.trace), (1, .trace), (2, .debug), (3, .debug), (4, .info), (5, .info),
                      (6, .notice), (7, .warning), (8, .error), (9, .critical), (42, .critical)])
    func levels(xtl: Int32, expected: Logger.Level) {
        #expect(XenLogSink.level(xtl: xtl) == expected)
    }

    @Test("lines logged while opening reach the Logger with their level, context and errno")
    func openLogsReachLogger() {
        let fake = FakeControl()
        fake.failures[.open] = EACCES
        fake.logsOnOpen = [.init(level: XenLogLevel.error, errnoval: EACCES, context: "xencall",
                                 message: "Could not obtain handle on privileged command interface\n")]
        let capture = LogCapture()
        #expect(throws: HostError.self) { try makeHost(fake, capture: capture) }
        let records = capture.records
        #expect(records.count == 1)
        #expect(records.first?.level == .error)
        #expect(records.first?.message == "Could not obtain handle on privileged command interface")
        #expect(records.first?.metadata["xen.context"].map { "\($0)" } == "xencall")
        #expect(records.first?.metadata["errno"].map { "\($0)" } == "\(EACCES)")
    }

    @Test("lines logged during later calls still find the Logger, and errno -1 is left out")
    func laterLogs() throws {
        let fake = FakeControl()
        fake.logsOnMap = [.init(level: XenLogLevel.warn, errnoval: -1, context: "xenforeignmemory", message: "slow")]
        let capture = LogCapture()
        let host = try makeHost(fake, capture: capture)
        _ = try [UInt64(1)].withUnsafeBufferPointer { (b) throws(HostError) in try host.mapFrames(2, b) }
        let records = capture.records
        #expect(records.count == 1)
        #expect(records.first?.level == .warning)
        #expect(records.first?.message == "slow")
        #expect(records.first?.metadata["errno"] == nil)
    }

    @Test("the Logger's level filters xentoollog chatter")
    func filtering() throws {
        let fake = FakeControl()
        fake.logsOnOpen = [.init(level: XenLogLevel.debug, errnoval: -1, context: "xc", message: "noise"),
                           .init(level: XenLogLevel.notice, errnoval: -1, context: "xc", message: "news")]
        let capture = LogCapture()
        var logger = capture.logger()
        logger.logLevel = .info
        _ = try XenHost(control: fake, logger: logger)
        #expect(capture.records.map(\.message) == ["news"])
    }
}

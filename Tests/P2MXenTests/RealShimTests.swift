// Tests against the real CXenCtrl shim and libxenctrl: they only pass if the shim
// compiled against Xen's headers and links against the installed libraries.

import Foundation
import P2MEngine
import P2MTestSupport
import Testing
@testable import P2MXen

@Suite("Real libxenctrl")
struct RealShimTests {
    static var privcmdPresent: Bool {
        FileManager.default.fileExists(atPath: "/proc/xen/privcmd")
            || FileManager.default.fileExists(atPath: "/dev/xen/privcmd")
    }

    @Test("open on this machine: .noXen without privcmd, else a usable host or a clear error")
    func openOnThisMachine() {
        let capture = LogCapture()
        if !Self.privcmdPresent {
            let error = #expect(throws: HostError.self) { try XenHost.open(logger: capture.logger()) }
            #expect(error == .noXen(path: "/proc/xen/privcmd"))
            #expect(error?.description.contains("no Xen here (/proc/xen/privcmd missing)") == true)
            // The shim stops before libxenctrl, so nothing has anything to log.
            #expect(capture.records.isEmpty)
            return
        }
        do {
            let host = try XenHost.open(logger: capture.logger())
            #expect(host.backendName == "xen")
            // Only dom0 can open privcmd, and dom0 always exists.
            let domains = try host.listDomains()
            #expect(domains.contains { $0.domid == 0 })
            let maxMFN = try host.maxMFN()
            #expect(maxMFN > 0)
        } catch .noXen(let path) {
            Issue.record("privcmd exists but open reported no Xen at \(path)")
        } catch .system(let operation, let code) {
            #expect(operation.hasPrefix("open libxenctrl"))
            if code == EACCES || code == EPERM {
                #expect(operation.contains("run as root in dom0"))
            }
            #expect(!"\(HostError.system(operation: operation, errno: code))".isEmpty)
        } catch {
            Issue.record("unexpected error opening libxenctrl: \(error)")
        }
    }

    // shim.c's _Static_asserts pin each field's offset in Xen's headers to these numbers;
    // this pins the engine's parser to the same ones, so the two cannot drift apart.
    @Test("the engine reads each shared-info field at the offset shim.c's static asserts pin",
          arguments: [(GuestWidth.bits64, [3088, 3096, 3112, 3120, 3128]), (GuestWidth.bits32, [2316, 2320, 2328, 2332, 2336])])
    func sharedInfoLayout(width: GuestWidth, offsets: [Int]) throws {
        var page = [UInt8](repeating: 0, count: 4096)
        let wordBytes = width == .bits64 ? 8 : 4
        for (i, off) in offsets.enumerated() {
            for b in 0..<wordBytes { page[off + b] = b == 0 ? UInt8(0x10 + i) : 0 }
        }
        let a = try #require(ArchSharedInfo(page: page, width: width))
        #expect([a.maxPfn, a.frameListList, a.p2mCr3, a.p2mVaddr, a.p2mGeneration] == [0x10, 0x11, 0x12, 0x13, 0x14])
    }

    @Test("the C flag and log-level constants reach Swift with Xen's values")
    func cConstants() {
        #expect(DomainFlags.hvm.rawValue == 1 << 1)
        #expect(EmulationFlags.lapic.rawValue == 1 << 0 && EmulationFlags.pit.rawValue == 1 << 8)
        #expect(XenLogLevel.debug == 1)
        #expect(XenLogLevel.error == 8)
        #expect(XenLogLevel.critical == 9)
    }
}

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

    @Test("the shim's shared-info offsets are the engine's")
    func sharedInfoLayout() {
        let shim = ShimControl()
        #expect(Int(shim.sharedInfoArchOffset(widthBytes: 8)) == SharedInfoLayout.archOffset(.bits64))
        #expect(Int(shim.sharedInfoArchOffset(widthBytes: 4)) == SharedInfoLayout.archOffset(.bits32))
    }

    @Test("the C flag and log-level constants reach Swift with Xen's values")
    func cConstants() {
        #expect(DomainFlags.hvm.rawValue == 1 << 1)
        #expect(DomainFlags.pvh.rawValue == 1 << 4)
        #expect(XenLogLevel.debug == 1)
        #expect(XenLogLevel.error == 8)
        #expect(XenLogLevel.critical == 9)
    }
}

// The hypervisor check at open: what the daemon logs at start, and the one case it
// refuses (a hypervisor that rejects this build's domctl interface, i.e. a package built
// for another Xen release).

import Foundation
import Logging
import P2MEngine
import Testing
@testable import P2MXen

#if canImport(Glibc)
import Glibc
#endif

/// FakeControl playing a chosen hypervisor, optionally refusing every domctl.
private struct OtherHypervisor: XenControlInterface {
    let inner = FakeControl()
    var version: XenVersion
    var domctlErrno: Int32?

    func open(log: XenLogCallback?, context: UnsafeMutableRawPointer?) throws(ShimErrno) -> XenHandle { try inner.open(log: log, context: context) }
    func close(_ h: XenHandle) { inner.close(h) }
    func listDomains(_ h: XenHandle, first: UInt32, max: UInt32) throws(ShimErrno) -> [RawDomainInfo] { try inner.listDomains(h, first: first, max: max) }
    func domainInfo(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> RawDomainInfo { try inner.domainInfo(h, domid: domid) }
    func guestWidth(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> UInt32 { try inner.guestWidth(h, domid: domid) }
    func nrGpfns(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> UInt64 { try inner.nrGpfns(h, domid: domid) }
    func maxRAMPage(_ h: XenHandle) throws(ShimErrno) -> UInt64 { try inner.maxRAMPage(h) }
    func readSharedInfoPage(_ h: XenHandle, domid: UInt32, frame: UInt64) throws(ShimErrno) -> [UInt8] { try inner.readSharedInfoPage(h, domid: domid, frame: frame) }
    func mapFrames(_ h: XenHandle, domid: UInt32, mfns: UnsafeBufferPointer<UInt64>) throws(ShimErrno) -> MappedFrames { try inner.mapFrames(h, domid: domid, mfns: mfns) }
    func unmapFrames(_ h: XenHandle, base: UnsafeMutableRawPointer, count: UInt32) throws(ShimErrno) { try inner.unmapFrames(h, base: base, count: count) }
    func mapM2P(_ h: XenHandle, entries: UInt64) throws(ShimErrno) -> UnsafePointer<UInt64> { try inner.mapM2P(h, entries: entries) }
    func unmapM2P(base: UnsafePointer<UInt64>, mappedBytes: Int) throws(ShimErrno) { try inner.unmapM2P(base: base, mappedBytes: mappedBytes) }
    func domainName(_ h: XenHandle, domid: UInt32) throws(ShimErrno) -> String { try inner.domainName(h, domid: domid) }
    func ownXenstoreValue(_ h: XenHandle, key: String) throws(ShimErrno) -> String { try inner.ownXenstoreValue(h, key: key) }
    func hypervisorVersion(_ h: XenHandle) throws(ShimErrno) -> XenVersion { version }
    func checkDomctl(_ h: XenHandle) throws(ShimErrno) { if let e = domctlErrno { throw ShimErrno(e) } }
}

@Suite struct HypervisorVersionTests {
    @Test func builtSeriesIsAKnownRelease() {
        // shim.c's #if table: a build against any other libxen-dev does not compile.
        #expect(["4.17", "4.20"].contains(XenVersion.built.series))
        #expect(XenVersion.builtInterface.hasPrefix("Xen \(XenVersion.built.series) (domctl interface 0x"))
    }

    @Test func matchingHypervisorOpensAndIsReported() throws {
        let v = XenVersion(major: XenVersion.built.major, minor: XenVersion.built.minor, extra: ".5-pre")
        let host = try XenHost(control: OtherHypervisor(version: v), logger: Logger(label: "t"))
        #expect(host.hypervisor == v)
        #expect(host.hypervisor.description == "\(XenVersion.built.series).5-pre")
    }

    @Test func otherReleaseRefusingDomctlIsNotDrivable() {
        let other = XenVersion(major: 4, minor: XenVersion.built.minor == 17 ? 20 : 17, extra: ".1")
        let control = OtherHypervisor(version: other, domctlErrno: EACCES)
        #expect(throws: HostError.hypervisorNotDrivable(hypervisor: other.description, builtFor: XenVersion.builtInterface)) {
            _ = try XenHost(control: control, logger: Logger(label: "t"))
        }
        // The handle opened for the check is closed again.
        #expect(control.inner.closeCount == 1)
        let message = HostError.hypervisorNotDrivable(hypervisor: "4.20.1", builtFor: "Xen 4.17 (domctl interface 0x15)").description
        #expect(message.hasSuffix("install the xenp2m package built for Xen 4.20"))
        #expect(!message.contains("\n"))
    }

    @Test func sameReleaseDomctlFailureIsASystemError() {
        // Same series: EACCES is not an interface mismatch (XSM, not root): say what failed.
        let control = OtherHypervisor(version: XenVersion(major: XenVersion.built.major, minor: XenVersion.built.minor, extra: ".0"),
                                      domctlErrno: EACCES)
        do {
            _ = try XenHost(control: control, logger: Logger(label: "t"))
            Issue.record("opened although the domctl failed")
        } catch {
            guard case .system(_, let e) = error else { Issue.record("wrong error \(error)"); return }
            #expect(e == EACCES)
        }
    }
}

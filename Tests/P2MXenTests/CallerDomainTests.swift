// dom0 is the Xen backend's business: XenHost says which listed domain is the one it runs
// in, and the scanner answers for it instead of failing on Xen's refusal to map it.

import Foundation
import Logging
import P2MEngine
import P2MTestSupport
import Testing
@testable import P2MXen

@Suite("XenHost: the calling domain")
struct CallerDomainTests {
    @Test("the domain xenstore names as ours is marked, the others are not")
    func callerIsMarked() throws {
        let fake = FakeControl()
        fake.domains = [raw(0), raw(3), raw(5)]
        fake.ownXenstore["domid"] = "5"
        let host = try XenHost(control: fake, logger: LogCapture().logger())
        #expect(try host.listDomains().map(\.isCaller) == [false, false, true])
        #expect(try host.domainInfo(5).isCaller)
        #expect(try !host.domainInfo(0).isCaller)
    }

    @Test("without an answer from xenstore the caller is dom0, and the log says so", arguments: [ENOTCONN, ENOENT, EACCES])
    func noXenstoreMeansDom0(code: Int32) throws {
        let fake = FakeControl()
        fake.domains = [raw(0), raw(3)]
        fake.failures[.ownXenstoreValue] = code
        let capture = LogCapture()
        let host = try XenHost(control: fake, logger: capture.logger())
        #expect(try host.listDomains().map(\.isCaller) == [true, false])
        let line = try #require(capture.records.first { $0.message.contains("taking it to be dom0") })
        #expect(line.level == .notice)
    }

    @Test("a domid that is not a number is not trusted")
    func garbageDomid() throws {
        let fake = FakeControl()
        fake.domains = [raw(0), raw(3)]
        fake.ownXenstore["domid"] = "three"
        let capture = LogCapture()
        let host = try XenHost(control: fake, logger: capture.logger())
        #expect(try host.domainInfo(0).isCaller)
        #expect(capture.records.contains { $0.level == .warning && $0.metadata["value"] == "three" })
    }

    @Test("dom0, which Xen refuses to map, scans as not applicable with the reason, not as an error")
    func dom0IsNotApplicable() throws {
        let fake = FakeControl()
        fake.domains = [raw(0), raw(3)]
        fake.refuseMappingDomid = 0
        let host = try XenHost(control: fake, logger: LogCapture().logger())
        let r = P2MScanner(host: host).scan(0)
        #expect(r.severity == .notApplicable, "\(r.error ?? "")")
        #expect(r.error == nil)
        #expect(r.migration.verdict == .notApplicable)
        #expect(r.migration.reason.contains("the domain this check runs in"))
        #expect(r.migration.reason.contains("refuses foreign mappings of the calling domain"))
        // Nothing was even tried: the answer comes from the listing alone.
        #expect(fake.count(.sharedInfo) == 0 && fake.count(.mapFrames) == 0 && fake.count(.mapM2P) == 0)
    }
}

import P2MConfig
import Testing
@testable import XenP2MDaemon

/// http.max_connections and http.max_event_streams: the counting (the daemon's refusals
/// are DaemonEndToEndTests.testConnectionAndEventStreamLimits) and the config keys.
struct ConnectionLimiterTests {
    @Test func requestSlotsAreCountedAndGivenBack() {
        let l = ConnectionLimiter()
        let a = l.admit(max: 2), b = l.admit(max: 2)
        #expect(a != nil && b != nil)
        #expect(l.admit(max: 2) == nil, "a third request connection within a limit of 2")
        #expect(l.current == .init(requests: 2, streams: 0))
        a?.release()
        a?.release() // a close seen twice gives back one slot
        #expect(l.current == .init(requests: 1, streams: 0))
        #expect(l.admit(max: 2) != nil)
        // A reload lowering the limit applies to the next connection, not to open ones.
        #expect(l.admit(max: 1) == nil)
        #expect(l.current.requests == 2)
    }

    @Test func aStreamMovesToTheStreamCount() {
        let l = ConnectionLimiter()
        let a = l.admit(max: 1)!
        #expect(a.becomeStream(max: 1))
        #expect(l.current == .init(requests: 0, streams: 1))
        let b = l.admit(max: 1)!
        #expect(!b.becomeStream(max: 1), "a second stream within a limit of 1")
        #expect(l.current == .init(requests: 1, streams: 1), "a refused stream keeps its request slot")
        #expect(!a.becomeStream(max: 5), "already a stream")
        a.release()
        b.release()
        #expect(l.current == .init(requests: 0, streams: 0))
    }

    @Test func configKeysHaveDefaultsAndBounds() throws {
        let d = DaemonConfig()
        #expect(d.maxConnections == 256 && d.maxEventStreams == 64)
        let c = try DaemonConfig.parse("http:\n  max_connections: 1000\n  max_event_streams: 5\n", file: "t.yaml")
        #expect(c.maxConnections == 1000 && c.maxEventStreams == 5)
        for (text, key) in [("http:\n  max_connections: 0\n", "max_connections"),
                            ("http:\n  max_event_streams: -3\n", "max_event_streams"),
                            ("http:\n  max_connections: many\n", "max_connections"),
                            ("http:\n  max_connections: 1000000\n", "max_connections")] {
            #expect(performing: { try DaemonConfig.parse(text, file: "t.yaml") },
                    throws: { ($0 as? ConfigError)?.key?.hasSuffix(key) ?? false })
        }
    }
}

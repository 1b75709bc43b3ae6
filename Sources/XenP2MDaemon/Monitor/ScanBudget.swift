/// A token bucket over mapped frames: scans reserve their estimated frames up front (so
/// concurrent scans share the rate fairly) and settle the difference afterwards. One
/// second of budget may be spent in a burst.
actor ScanBudget {
    private var rate: Double
    private var tokens: Double
    private var last = ContinuousClock.now

    init(framesPerSecond: Double) {
        rate = framesPerSecond
        tokens = framesPerSecond
    }

    func setRate(_ r: Double) {
        refill()
        rate = r
        tokens = min(tokens, r)
    }

    private func refill() {
        let now = ContinuousClock.now
        let d = now - last
        last = now
        guard rate > 0 else { return }
        tokens = min(rate, tokens + rate * (Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18))
    }

    /// Takes `frames` from the bucket and sleeps off any deficit. Returns seconds waited.
    func reserve(frames: Double) async -> Double {
        guard rate > 0 else { return 0 }
        refill()
        let want = min(frames, rate)
        tokens -= want
        guard tokens < 0 else { return 0 }
        let wait = -tokens / rate
        try? await Task.sleep(for: .seconds(wait))
        return wait
    }

    func settle(estimated: Double, actual: Double) {
        guard rate > 0 else { return }
        refill()
        tokens -= max(0, actual - min(estimated, rate)) - max(0, min(estimated, rate) - actual)
        tokens = min(tokens, rate)
    }
}

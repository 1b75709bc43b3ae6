/// Counts findings per kind and keeps a capped list of samples, so a guest with a
/// million bad entries costs the same memory as one with a single bad entry.
struct FindingCollector {
    private var counts = [UInt64](repeating: 0, count: FindingKind.allCases.count)
    private var samples = [[FindingSample]](repeating: [], count: FindingKind.allCases.count)
    let sampleLimit: Int
    /// Findings added so far, all kinds (lets a caller tell whether a step found any).
    private(set) var total: UInt64 = 0

    private static let index: [FindingKind: Int] = {
        var d: [FindingKind: Int] = [:]
        for (i, k) in FindingKind.allCases.enumerated() { d[k] = i }
        return d
    }()

    init(sampleLimit: Int) { self.sampleLimit = max(0, sampleLimit) }

    mutating func add(_ kind: FindingKind, _ sample: @autoclosure () -> FindingSample) {
        let i = Self.index[kind]!
        counts[i] &+= 1
        total &+= 1
        if samples[i].count < sampleLimit { samples[i].append(sample()) }
    }

    /// Adds `n` occurrences with at most one sample (for runs counted in bulk).
    mutating func add(_ kind: FindingKind, count n: UInt64, _ sample: FindingSample) {
        guard n > 0 else { return }
        let i = Self.index[kind]!
        counts[i] &+= n
        total &+= n
        if samples[i].count < sampleLimit { samples[i].append(sample) }
    }

    func count(_ kind: FindingKind) -> UInt64 { counts[Self.index[kind]!] }

    var isEmpty: Bool { counts.allSatisfy { $0 == 0 } }

    var findings: [Finding] {
        FindingKind.allCases.enumerated().compactMap { i, k in
            counts[i] == 0 ? nil : Finding(kind: k, severity: k.severity, count: counts[i], summary: k.summary, samples: samples[i])
        }
    }
}

// Guest-memory fuzzer for the P2M engine.
//
// Built by scripts/fuzz.sh with `-sanitize=fuzzer,address -D P2M_FUZZ`: libFuzzer drives
// LLVMFuzzerTestOneInput. In an ordinary build (swift build, CI) the same target is a
// replayer: `P2MFuzz FILE...` runs saved inputs through the harness and prints what it
// found, and `P2MFuzz --write-seeds DIR` writes the seed corpus.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import P2MFuzzSupport

func warn(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }

#if P2M_FUZZ
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = (data != nil && size > 0) ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    let violations = FuzzHarness.run(bytes)
    if !violations.isEmpty {
        for v in violations { warn("P2MFuzz invariant violated: \(v)\n") }
        // abort() makes libFuzzer save the input as a crash artifact.
        abort()
    }
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

// SwiftPM links executables with `main` aliased to `<module>_main`; libFuzzer's driver
// is started from here instead of from libFuzzer's own main.
@_cdecl("P2MFuzz_main")
public func p2mFuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var c = argc
    var v = argv
    return LLVMFuzzerRunDriver(&c, &v) { data, size in fuzzOneInput(data, size) }
}
#else
@main
struct P2MFuzzReplay {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        if args.first == "--write-seeds", args.count == 2 {
            let dir = URL(fileURLWithPath: args[1])
            try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            for (name, bytes) in FuzzSeeds.all {
                do {
                    try Data(bytes).write(to: dir.appendingPathComponent(name))
                } catch {
                    warn("cannot write \(name): \(error)\n")
                    exit(1)
                }
            }
            print("wrote \(FuzzSeeds.all.count) seeds to \(dir.path)")
            return
        }
        guard !args.isEmpty else {
            warn("usage: P2MFuzz FILE...   replay fuzz inputs\n       P2MFuzz --write-seeds DIR\n")
            exit(2)
        }
        var failed = 0
        for path in args {
            guard let data = FileManager.default.contents(atPath: path) else {
                warn("cannot read \(path)\n")
                exit(2)
            }
            let out = FuzzHarness.execute(Array(data))
            for (i, r) in out.reports.enumerated() {
                let m = out.meters[i]
                let kinds = r.findings.map { "\($0.kind.rawValue)=\($0.count)" }.joined(separator: " ")
                print("\(path) scan \(i + 1): severity \(r.severity.rawValue) \(r.error ?? "") [\(kinds)] map calls \(m.mapCalls), frames \(m.framesMapped)")
            }
            for v in out.violations { print("\(path): VIOLATION \(v)") }
            if !out.violations.isEmpty { failed += 1 }
        }
        exit(failed == 0 ? 0 : 1)
    }
}
#endif

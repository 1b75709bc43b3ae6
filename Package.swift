// swift-tools-version: 6.0
// xenp2m: P2M consistency monitor for Xen PV guests.
//
// Layers (dependencies point down only):
//   xenp2md, xenp2mctl        executables (daemon, CLI); xenp2md picks the backend
//   XenP2MDaemon              service, socket API, metrics (NIO lives here and above);
//                             scans any P2MHost it is handed, knows no backend
//   P2MXen | P2MSimulator     host backends: real Xen via the shim, simulated host
//   | P2MDumpCore             (and dump-core files, offline)
//   P2MEngine                 walkers, checks, report; no Xen headers, no networking
//   CXenCtrl                  the only code that includes xenctrl.h
//   P2MConfig                 YAML reading with file:line:key errors (daemon config, scenarios)
import PackageDescription

let package = Package(
    name: "xenp2m",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "P2MEngine", targets: ["P2MEngine"]),
        .library(name: "P2MSimulator", targets: ["P2MSimulator"]),
        .library(name: "P2MXen", targets: ["P2MXen"]),
        .library(name: "XenP2MDaemon", targets: ["XenP2MDaemon"]),
        .executable(name: "xenp2md", targets: ["xenp2md"]),
        .executable(name: "xenp2mctl", targets: ["xenp2mctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .target(
            name: "CXenCtrl",
            path: "Sources/CXenCtrl",
            cSettings: [.define("XC_WANT_COMPAT_MAP_FOREIGN_API"), .unsafeFlags(["-Wall", "-Wextra", "-Werror"])],
            linkerSettings: [
                .linkedLibrary("xenctrl"),
                .linkedLibrary("xenforeignmemory"),
                .linkedLibrary("xenguest"),
                .linkedLibrary("xenstore"),
                .linkedLibrary("xentoollog"),
            ]
        ),
        .target(
            name: "P2MEngine",
            path: "Sources/P2MEngine"
        ),
        // Typed YAML reading shared by the daemon's config and the simulator's scenarios.
        .target(
            name: "P2MConfig",
            dependencies: [.product(name: "Yams", package: "Yams")],
            path: "Sources/P2MConfig"
        ),
        .target(
            name: "P2MSimulator",
            dependencies: ["P2MEngine", "P2MConfig"],
            path: "Sources/P2MSimulator"
        ),
        .target(
            name: "P2MXen",
            dependencies: ["P2MEngine", "CXenCtrl", .product(name: "Logging", package: "swift-log")],
            path: "Sources/P2MXen"
        ),
        // Xen dump-core files (xl dump-core) as a host for the engine: offline checks.
        .target(
            name: "P2MDumpCore",
            dependencies: ["P2MEngine"],
            path: "Sources/P2MDumpCore"
        ),
        // Wire types of the socket API and a small POSIX HTTP-over-Unix-socket client: shared
        // by the daemon, the CLI and the tests, and free of NIO so the CLI stays small.
        .target(
            name: "XenP2MAPI",
            dependencies: ["P2MEngine"],
            path: "Sources/XenP2MAPI"
        ),
        .target(
            name: "XenP2MDaemon",
            dependencies: [
                "P2MEngine", "P2MConfig", "XenP2MAPI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Sources/XenP2MDaemon"
        ),
        .executableTarget(
            name: "xenp2md",
            dependencies: [
                "P2MEngine", "XenP2MDaemon", "P2MXen", "P2MSimulator", "P2MConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/xenp2md"
        ),
        .executableTarget(
            name: "xenp2mctl",
            dependencies: [
                "P2MEngine", "XenP2MAPI", "P2MDumpCore", "P2MXen",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/xenp2mctl"
        ),
        // Benchmarks (issue 6): a plain C loop as the baseline for the engine's check.
        .target(
            name: "CBenchReference",
            path: "Sources/CBenchReference",
            cSettings: [.unsafeFlags(["-O2"])]
        ),
        .executableTarget(
            name: "xenp2m-bench",
            dependencies: [
                "P2MEngine", "P2MSimulator", "P2MXen", "CBenchReference", "XenP2MAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/xenp2m-bench"
        ),
        // Guest-memory fuzzing (issue 7): decoder, fuzz hosts and invariants in a library
        // shared by the fuzz executable and the regression tests; scripts/fuzz.sh builds
        // P2MFuzz with -sanitize=fuzzer (otherwise it is a replayer for saved inputs).
        .target(
            name: "P2MFuzzSupport",
            dependencies: ["P2MEngine", "P2MSimulator", "P2MDumpCore", "P2MTestSupport"],
            path: "Sources/P2MFuzzSupport"
        ),
        // What tests and the fuzzer share and no product ships: a seeded generator, a log
        // capture, the simulator's fault catalogue.
        .target(
            name: "P2MTestSupport",
            dependencies: ["P2MSimulator", .product(name: "Logging", package: "swift-log")],
            path: "Sources/P2MTestSupport"
        ),
        .executableTarget(
            name: "P2MFuzz",
            dependencies: ["P2MFuzzSupport"],
            path: "Sources/P2MFuzz"
        ),
        .testTarget(
            name: "P2MEngineTests",
            dependencies: ["P2MEngine", "P2MSimulator", "P2MConfig", "P2MFuzzSupport", "P2MTestSupport"],
            path: "Tests/P2MEngineTests"
        ),
        .testTarget(
            name: "P2MXenTests",
            dependencies: ["P2MXen", "P2MEngine", "P2MTestSupport"],
            path: "Tests/P2MXenTests"
        ),
        .testTarget(
            name: "P2MDumpCoreTests",
            dependencies: ["P2MDumpCore", "P2MEngine", "P2MSimulator", "P2MTestSupport"],
            path: "Tests/P2MDumpCoreTests"
        ),
        // End-to-end: drives the built xenp2md and xenp2mctl binaries (found next to the
        // test bundle); the libraries are linked for decoding output and config checks.
        .testTarget(
            name: "XenP2MDaemonUnitTests",
            dependencies: [
                "XenP2MDaemon", "P2MSimulator", "P2MConfig", "P2MEngine", "XenP2MAPI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Tests/XenP2MDaemonUnitTests"
        ),
        .testTarget(
            name: "XenP2MDaemonTests",
            dependencies: ["P2MEngine", "XenP2MAPI", "XenP2MDaemon"],
            path: "Tests/XenP2MDaemonTests"
        ),
    ]
)

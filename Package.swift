// swift-tools-version: 6.0
// xenp2m: P2M consistency monitor for Xen PV guests.
//
// Layers (dependencies point down only):
//   xenp2md, xenp2mctl        executables (daemon, CLI)
//   XenP2MDaemon              service, socket API, metrics (NIO lives here and above)
//   P2MXen | P2MSimulator     host backends: real Xen via the shim, simulated host
//   P2MEngine                 walkers, checks, report; no Xen headers, no networking
//   CXenCtrl                  the only code that includes xenctrl.h
import PackageDescription

let package = Package(
    name: "xenp2m",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "P2MEngine", targets: ["P2MEngine"]),
        .library(name: "P2MSimulator", targets: ["P2MSimulator"]),
        .library(name: "P2MXen", targets: ["P2MXen"]),
        .executable(name: "xenp2md", targets: ["xenp2md"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
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
        .target(
            name: "P2MSimulator",
            dependencies: ["P2MEngine", .product(name: "Yams", package: "Yams")],
            path: "Sources/P2MSimulator"
        ),
        .target(
            name: "P2MXen",
            dependencies: ["P2MEngine", "CXenCtrl", .product(name: "Logging", package: "swift-log")],
            path: "Sources/P2MXen"
        ),
        .executableTarget(
            name: "xenp2md",
            dependencies: [
                "P2MEngine", "P2MSimulator", "P2MXen",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/xenp2md"
        ),
        .testTarget(
            name: "P2MEngineTests",
            dependencies: ["P2MEngine", "P2MSimulator"],
            path: "Tests/P2MEngineTests"
        ),
        .testTarget(
            name: "P2MXenTests",
            dependencies: ["P2MXen", "P2MEngine"],
            path: "Tests/P2MXenTests"
        ),
    ]
)

import P2MEngine

/// The result of checking one dump: what the file says about itself, and the engine's
/// report on the guest in it (the same schema a live scan produces, backend "core").
public struct CoreCheck: Sendable, Equatable, Codable {
    public var core: CoreDumpInfo
    public var report: P2MReport
}

/// Checks the P2M of the guest in a dump-core file, offline, with the live engine.
/// Container problems (not a dump, truncated, hostile sizes) throw; problems of the
/// guest's P2M are findings in the report, exactly as for a live guest.
public func checkCoreFile(path: String, options: ScanOptions = ScanOptions(),
                          core: CoreDumpOptions = CoreDumpOptions()) throws(CoreDumpError) -> CoreCheck {
    let host = try CoreDumpHost(path: path, options: core)
    let report = P2MScanner(host: host, options: options).scan(host.domid)
    return CoreCheck(core: host.dump.info, report: report)
}

/// `checkCoreFile`, report only: what `xenp2mctl check-core --json` prints.
public func checkCore(path: String, options: ScanOptions = ScanOptions(),
                      core: CoreDumpOptions = CoreDumpOptions()) throws(CoreDumpError) -> P2MReport {
    try checkCoreFile(path: path, options: options, core: core).report
}

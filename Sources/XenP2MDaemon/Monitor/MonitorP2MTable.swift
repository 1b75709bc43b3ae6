import P2MEngine

extension Monitor {
    /// Every pfn -> mfn of a domain, read now as xen-mfndump reads it, on a scan thread.
    func p2mTable(_ domid: DomID) async -> Result<P2MTable, HostError>? {
        let host = self.host
        let nice = Int32(config.scanNice)
        return await runScan(nice: nice) { () -> Result<P2MTable, HostError> in
            do throws(HostError) { return .success(try P2MTable.read(host: host, domid: domid)) } catch { return .failure(error) }
        }
    }
}

// Generated from config/demo-fleet.yaml (a test keeps the two identical).
public enum DemoFleet {
    public static let yaml = #"""
# xenp2m demo fleet for the simulated host (xenp2md --backend sim).
# The same text is built into the binaries, so the daemon runs without this file;
# copy it and pass --scenario FILE to simulate your own fleet.
#
# host.memory_gib    machine memory of the simulated host
# host.faults        [{kind, errno, after_calls, count, entries}] the host's own calls
#                    fail: list_domains_fails, m2p_map_fails, m2p_map_short; see README
# domains[]:
#   domid, name      identity (domid 1..32751)
#   type             pv | hvm | pvh (only pv guests have a P2M to check)
#   width            64 | 32 (32-bit PAE guest: 1024 entries per page)
#   memory_mib       populated at boot, from pfn 0
#   maxmem_mib       size of the P2M (published max_pfn); default memory_mib
#   formats          both (Linux default) | list_only (fll = ~0) | tree_only
#   paging_levels    4 | 5 (64-bit guests)
#   identity         [{start_pfn, count}] 1:1 ranges (holes in RAM)
#   balloon          {min_mib, max_mib, step_mib}: moves one step per poll
#   faults           [{kind, pfn|leaf|index|chunk|value|count|same_as}], see README
# churn              {first_domid, last_domid, max_domains, memory_mib}: after every
#                    poll a guest in that domid range is created (domids reused as
#                    new guests), destroyed, given an M2P mismatch or repaired
#                    (scripts/soak.sh); defaults 100, 115, 8, 64
host:
  memory_gib: 32
domains:
  - domid: 1
    name: web-tree
    memory_mib: 1024
  - domid: 2
    name: db-balloon
    memory_mib: 2048
    maxmem_mib: 8192
    balloon: {min_mib: 1024, max_mib: 4096, step_mib: 512}
  - domid: 3
    name: bigmem-list
    memory_mib: 2048
    maxmem_mib: 614400
    formats: list_only
  - domid: 4
    name: legacy32
    width: 32
    memory_mib: 512
    identity: [{start_pfn: 0xa0, count: 0x60}]
  - domid: 5
    name: win-hvm
    type: hvm
    memory_mib: 4096
  - domid: 6
    name: broken
    memory_mib: 1024
    faults:
      - {kind: m2p_mismatch, pfn: 4096}
      - {kind: duplicate_mfn, pfn: 9001, same_as: 9000}
      - {kind: tree_list_mismatch, pfn: 70000}

"""#
}

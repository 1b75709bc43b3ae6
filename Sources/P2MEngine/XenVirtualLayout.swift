/// Guest virtual addresses Xen keeps for itself (xen/include/public/arch-x86/xen-x86_64.h
/// and xen-x86_32.h). A P2M list placed there cannot be the guest's: the scanner and
/// libxenguest's checks (ToolstackModel, which compares exactly as libxenguest does) both
/// refuse such a range.
enum XenVirtualLayout {
    /// __HYPERVISOR_VIRT_START on x86-64: the start of the hole every 64-bit PV guest leaves.
    static let hypervisorStart64: UInt64 = 0xFFFF_8000_0000_0000
    /// __HYPERVISOR_VIRT_END - 1 on x86-64 (the hole is 16 PML4 slots of 512 GiB, up to 0xFFFF_8800_0000_0000 exclusive).
    static let hypervisorEnd64: UInt64 = 0xFFFF_87FF_FFFF_FFFF
    /// __HYPERVISOR_VIRT_START_PAE: a 32-bit PAE guest's address space ends here.
    static let hypervisorStartPAE: UInt64 = 0xF580_0000
}

/*
 * xenp2m_shim.h: the narrow C ABI between xenp2m and libxenctrl.
 *
 * This header deliberately includes no Xen header: Swift code sees only these
 * fixed-width types. shim.c is the one translation unit that includes
 * xenctrl.h, xenguest.h, xenforeignmemory.h and xenstore.h.
 *
 * Conventions: every function returns 0 on success or a positive errno value
 * on failure (never -1 with errno, never abort/exit). Out-parameters are only
 * written on success.
 */
#ifndef XENP2M_SHIM_H
#define XENP2M_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xp2m_handle xp2m_handle;

/* Log levels, equal to xentoollog's XTL_* values (pinned in shim.c). */
enum {
    XP2M_LOG_DEBUG = 1,
    XP2M_LOG_VERBOSE = 2,
    XP2M_LOG_DETAIL = 3,
    XP2M_LOG_PROGRESS = 4,
    XP2M_LOG_INFO = 5,
    XP2M_LOG_NOTICE = 6,
    XP2M_LOG_WARN = 7,
    XP2M_LOG_ERROR = 8,
    XP2M_LOG_CRITICAL = 9,
};

/* Log callback: level is an XP2M_LOG_* value; errnoval is -1 when none applies. */
typedef void (*xp2m_log_fn)(void *ctx, int level, int errnoval, const char *context, const char *message);

/* Domain flags, translated from XEN_DOMINF_* so Swift never needs Xen headers. */
enum {
    XP2M_DOM_DYING = 1u << 0,
    XP2M_DOM_HVM = 1u << 1,      /* auto-translated: HVM or PVH */
    XP2M_DOM_SHUTDOWN = 1u << 2,
    XP2M_DOM_PAUSED = 1u << 3,
    /* 1u << 4 was a PVH flag: Swift now tells PVH from HVM by emulation_flags */
    XP2M_DOM_RUNNING = 1u << 5,
};

/*
 * The emulated devices of an HVM container (Xen's XEN_X86_EMU_*, pinned in shim.c), as
 * xp2m_dominfo.emulation_flags reports them: which of them a domain has tells PVH from HVM.
 */
enum {
    XP2M_EMU_LAPIC = 1u << 0,
    XP2M_EMU_HPET = 1u << 1,
    XP2M_EMU_PM = 1u << 2,
    XP2M_EMU_RTC = 1u << 3,
    XP2M_EMU_IOAPIC = 1u << 4,
    XP2M_EMU_PIC = 1u << 5,
    XP2M_EMU_VGA = 1u << 6,
    XP2M_EMU_IOMMU = 1u << 7,
    XP2M_EMU_PIT = 1u << 8,
};

typedef struct {
    uint32_t domid;
    uint32_t flags;            /* XP2M_DOM_* */
    uint32_t shutdown_reason;  /* valid when XP2M_DOM_SHUTDOWN */
    uint32_t nr_online_vcpus;
    uint64_t tot_pages;
    uint64_t max_pages;
    uint64_t shared_info_frame;
    uint32_t emulation_flags;  /* XP2M_EMU_*, as Xen reports them (HVM containers only) */
    uint8_t handle[16];        /* the domain's UUID */
} xp2m_dominfo;

/*
 * Opens libxenctrl, libxenforeignmemory and libxenstore. Returns ENOENT
 * (without touching libxenctrl) when neither /proc/xen/privcmd nor
 * /dev/xen/privcmd exists. log may be NULL (messages are then dropped, never
 * printed to stderr).
 */
int xp2m_open(xp2m_handle **out, xp2m_log_fn log, void *log_ctx);
void xp2m_close(xp2m_handle *h);

/* Fills up to max entries starting at domid first; *n_out gets the count. */
int xp2m_list_domains(xp2m_handle *h, uint32_t first, xp2m_dominfo *out, uint32_t max, uint32_t *n_out);
/* ESRCH when the domain does not exist (any more). */
int xp2m_domain_info(xp2m_handle *h, uint32_t domid, xp2m_dominfo *out);
/*
 * Reads key relative to the calling domain's own xenstore directory
 * (/local/domain/<caller's domid>/key; xen-init-dom0 writes "domid" for dom0) into buf,
 * NUL-terminated and truncated to len - 1 bytes. ENOENT when the key is missing,
 * ENOTCONN when xenstored could not be reached at open.
 */
int xp2m_own_xenstore_value(xp2m_handle *h, const char *key, char *buf, size_t len);
int xp2m_guest_width(xp2m_handle *h, uint32_t domid, uint32_t *width_bytes);
int xp2m_nr_gpfns(xp2m_handle *h, uint32_t domid, uint64_t *nr);
/* Xen's max_page (XENMEM_maximum_ram_page), as Xen answers it: one past the last frame. */
int xp2m_max_ram_page(xp2m_handle *h, uint64_t *max_page);

/* Copies the 4096-byte shared-info page of domid (frame from xp2m_dominfo). */
int xp2m_read_shared_info_page(xp2m_handle *h, uint32_t domid, uint64_t frame, uint8_t page[4096]);

/*
 * Maps n frames of domid read-only into one contiguous range. errs[i] is 0 or
 * a positive errno for frame i (its page then reads as unmapped: never touch
 * it). The whole call fails only if the mapping could not even be attempted;
 * success with every errs[i] set is possible. Unmap with
 * xp2m_unmap_frames(h, *addr, n).
 */
int xp2m_map_frames(xp2m_handle *h, uint32_t domid, const uint64_t *mfns, uint32_t n, int32_t *errs, void **addr);
int xp2m_unmap_frames(xp2m_handle *h, void *addr, uint32_t n);

/*
 * Maps Xen's M2P read-only for nr_entries MFNs (xc_map_m2p). libxenctrl maps it in whole
 * chunks; the caller knows their size and passes the mapped length to xp2m_unmap_m2p.
 */
int xp2m_map_m2p(xp2m_handle *h, uint64_t nr_entries, const uint64_t **m2p);
int xp2m_unmap_m2p(const uint64_t *m2p, size_t mapped_bytes);

/*
 * Reads /local/domain/<domid>/name from xenstore into buf (NUL-terminated,
 * truncated to len - 1 bytes). ENOENT when the domain has no name, ENOTCONN
 * when xenstored could not be reached at open.
 */
int xp2m_domain_name(xp2m_handle *h, uint32_t domid, char *buf, size_t len);

/*
 * The Xen release series (e.g. "4.17") whose libxen-dev the shim was built against, and
 * that release's domctl interface version (Xen refuses any other with EACCES).
 */
const char *xp2m_built_xen_series(void);
uint32_t xp2m_built_domctl_interface(void);
/* The running hypervisor's version: major.minor and the extra string (".4", ".5-pre"). */
int xp2m_hypervisor_version(xp2m_handle *h, uint32_t *major, uint32_t *minor, char *extra, size_t len);
/*
 * 0 when the hypervisor accepts this build's domctl interface; otherwise the errno of a
 * harmless domctl on dom0 (EACCES: the hypervisor speaks another interface version).
 */
int xp2m_check_domctl(xp2m_handle *h);

#ifdef __cplusplus
}
#endif
#endif

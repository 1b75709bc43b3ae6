/*
 * shim.c: the only xenp2m code that includes Xen headers.
 *
 * It turns libxenctrl's conventions (NULL/-1 plus errno, logging to stderr
 * through a default logger) into the narrow ABI of xenp2m_shim.h: positive
 * errno returns, plain structs, and log lines handed to a callback.
 */
#ifndef XC_WANT_COMPAT_MAP_FOREIGN_API
#define XC_WANT_COMPAT_MAP_FOREIGN_API
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenforeignmemory.h>
#include <xenguest.h>
#include <xenstore.h>
#include <xentoollog.h>
#include <xen/foreign/x86_32.h>
#include <xen/foreign/x86_64.h>

#include "xenp2m_shim.h"

/*
 * The Xen releases this file is known to be right for, told apart by the interface
 * versions their public headers define (xen/domctl.h, xen/xen-compat.h). Everything that
 * differs between them stays in this file. An unknown libxen-dev stops the build here,
 * on one line, rather than building a shim nobody checked against that Xen.
 *   Xen 4.17 (Debian 12 bookworm, Ubuntu 24.04): domctl 0x15, latest interface 0x040e00
 *   Xen 4.20 (Debian 13 trixie):                 domctl 0x17, latest interface 0x041300
 * Checked against both releases' Debian libxen-dev. Upstream bumped domctl to 0x16 and
 * then 0x17 during 4.18 and 4.19; a 4.19 libxen-dev probably matches the 4.20 line and
 * would build, unchecked; 4.18 (0x16) is refused.
 * Both have xc_domain_getinfolist with the same xc_domaininfo_t fields this file reads;
 * 4.18 removed xc_domain_getinfo/xc_dominfo_t, which this file never used.
 */
#if XEN_DOMCTL_INTERFACE_VERSION == 0x15 && __XEN_LATEST_INTERFACE_VERSION__ == 0x00040e00
#define XP2M_XEN_SERIES "4.17"
#elif XEN_DOMCTL_INTERFACE_VERSION == 0x17 && __XEN_LATEST_INTERFACE_VERSION__ == 0x00041300
#define XP2M_XEN_SERIES "4.20"
#else
#error "xenp2m: unknown Xen release in libxen-dev (not 4.17 or 4.20 by XEN_DOMCTL_INTERFACE_VERSION/__XEN_LATEST_INTERFACE_VERSION__); check shim.c against its headers and add it to the table above shim.c's first #if"
#endif

/*
 * The engine parses raw shared-info pages (live and from core files) with
 * fixed offsets. Pin them to Xen's own layout so a header change breaks the
 * build instead of silently misreading guests.
 */
_Static_assert(offsetof(struct shared_info_x86_64, arch) + offsetof(struct arch_shared_info_x86_64, max_pfn) == 3088, "64-bit max_pfn");
_Static_assert(offsetof(struct shared_info_x86_64, arch) + offsetof(struct arch_shared_info_x86_64, pfn_to_mfn_frame_list_list) == 3096, "64-bit fll");
_Static_assert(offsetof(struct shared_info_x86_64, arch) + offsetof(struct arch_shared_info_x86_64, p2m_cr3) == 3112, "64-bit p2m_cr3");
_Static_assert(offsetof(struct shared_info_x86_64, arch) + offsetof(struct arch_shared_info_x86_64, p2m_vaddr) == 3120, "64-bit p2m_vaddr");
_Static_assert(offsetof(struct shared_info_x86_64, arch) + offsetof(struct arch_shared_info_x86_64, p2m_generation) == 3128, "64-bit generation");
_Static_assert(offsetof(struct shared_info_x86_32, arch) + offsetof(struct arch_shared_info_x86_32, max_pfn) == 2316, "32-bit max_pfn");
_Static_assert(offsetof(struct shared_info_x86_32, arch) + offsetof(struct arch_shared_info_x86_32, pfn_to_mfn_frame_list_list) == 2320, "32-bit fll");
_Static_assert(offsetof(struct shared_info_x86_32, arch) + offsetof(struct arch_shared_info_x86_32, p2m_cr3) == 2328, "32-bit p2m_cr3");
_Static_assert(offsetof(struct shared_info_x86_32, arch) + offsetof(struct arch_shared_info_x86_32, p2m_vaddr) == 2332, "32-bit p2m_vaddr");
_Static_assert(offsetof(struct shared_info_x86_32, arch) + offsetof(struct arch_shared_info_x86_32, p2m_generation) == 2336, "32-bit generation");
_Static_assert(sizeof(xen_pfn_t) == sizeof(uint64_t), "64-bit toolstack only");
_Static_assert(XP2M_EMU_LAPIC == XEN_X86_EMU_LAPIC && XP2M_EMU_HPET == XEN_X86_EMU_HPET && XP2M_EMU_PM == XEN_X86_EMU_PM &&
               XP2M_EMU_RTC == XEN_X86_EMU_RTC && XP2M_EMU_IOAPIC == XEN_X86_EMU_IOAPIC && XP2M_EMU_PIC == XEN_X86_EMU_PIC &&
               XP2M_EMU_VGA == XEN_X86_EMU_VGA && XP2M_EMU_IOMMU == XEN_X86_EMU_IOMMU && XP2M_EMU_PIT == XEN_X86_EMU_PIT,
               "emulation flags are Xen's XEN_X86_EMU_*");
_Static_assert(XP2M_LOG_DEBUG == XTL_DEBUG && XP2M_LOG_VERBOSE == XTL_VERBOSE && XP2M_LOG_DETAIL == XTL_DETAIL &&
               XP2M_LOG_PROGRESS == XTL_PROGRESS && XP2M_LOG_INFO == XTL_INFO && XP2M_LOG_NOTICE == XTL_NOTICE &&
               XP2M_LOG_WARN == XTL_WARN && XP2M_LOG_ERROR == XTL_ERROR && XP2M_LOG_CRITICAL == XTL_CRITICAL,
               "log levels are xentoollog's");

/* A xentoollog logger that forwards to the Swift side instead of stderr. */
struct shim_logger {
    xentoollog_logger base;
    xp2m_log_fn fn;
    void *ctx;
};

struct xp2m_handle {
    xc_interface *xch;
    xenforeignmemory_handle *fmem;
    struct xs_handle *xsh; /* may be NULL: names are optional */
    struct shim_logger logger;
};

static void shim_vmessage(xentoollog_logger *logger, xentoollog_level level, int errnoval,
                          const char *context, const char *format, va_list al)
{
    struct shim_logger *l = (struct shim_logger *)logger;
    char buf[512];

    if (!l->fn)
        return;
    vsnprintf(buf, sizeof(buf), format, al);
    l->fn(l->ctx, (int)level, errnoval, context ? context : "", buf);
}

static void shim_progress(xentoollog_logger *logger, const char *context, const char *doing_what,
                          int percent, unsigned long done, unsigned long total)
{
    (void)logger; (void)context; (void)doing_what; (void)percent; (void)done; (void)total;
}

static void shim_destroy(xentoollog_logger *logger)
{
    (void)logger; /* embedded in the handle; freed with it */
}

static int err_or(int fallback)
{
    return errno > 0 ? errno : fallback;
}

int xp2m_open(xp2m_handle **out, xp2m_log_fn log, void *log_ctx)
{
    xp2m_handle *h;
    int saved;

    if (!out)
        return EINVAL;
    /* Without privcmd libxenctrl can only fail; say so before it tries. */
    if (access("/proc/xen/privcmd", F_OK) != 0 && access("/dev/xen/privcmd", F_OK) != 0)
        return ENOENT;

    h = calloc(1, sizeof(*h));
    if (!h)
        return ENOMEM;
    h->logger.base.vmessage = shim_vmessage;
    h->logger.base.progress = shim_progress;
    h->logger.base.destroy = shim_destroy;
    h->logger.fn = log;
    h->logger.ctx = log_ctx;

    h->xch = xc_interface_open(&h->logger.base, &h->logger.base, 0);
    if (!h->xch) {
        saved = err_or(EACCES);
        free(h);
        return saved;
    }
    h->fmem = xenforeignmemory_open(&h->logger.base, 0);
    if (!h->fmem) {
        saved = err_or(EACCES);
        xc_interface_close(h->xch);
        free(h);
        return saved;
    }
    h->xsh = xs_open(XS_OPEN_READONLY);
    *out = h;
    return 0;
}

void xp2m_close(xp2m_handle *h)
{
    if (!h)
        return;
    if (h->xsh)
        xs_close(h->xsh);
    if (h->fmem)
        xenforeignmemory_close(h->fmem);
    if (h->xch)
        xc_interface_close(h->xch);
    free(h);
}

static void fill_dominfo(const xc_domaininfo_t *in, xp2m_dominfo *out)
{
    uint32_t f = 0;

    memset(out, 0, sizeof(*out));
    out->domid = in->domain;
    if (in->flags & XEN_DOMINF_dying)
        f |= XP2M_DOM_DYING;
    if (in->flags & XEN_DOMINF_shutdown) {
        f |= XP2M_DOM_SHUTDOWN;
        out->shutdown_reason = (in->flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask;
    }
    if (in->flags & XEN_DOMINF_paused)
        f |= XP2M_DOM_PAUSED;
    if (in->flags & XEN_DOMINF_running)
        f |= XP2M_DOM_RUNNING;
    if (in->flags & XEN_DOMINF_hvm_guest)
        f |= XP2M_DOM_HVM;
    out->flags = f;
    out->nr_online_vcpus = in->nr_online_vcpus;
    out->tot_pages = in->tot_pages;
    out->max_pages = in->max_pages;
    out->shared_info_frame = in->shared_info_frame;
    out->emulation_flags = in->arch_config.emulation_flags;
    memcpy(out->handle, in->handle, sizeof(out->handle));
}

int xp2m_list_domains(xp2m_handle *h, uint32_t first, xp2m_dominfo *out, uint32_t max, uint32_t *n_out)
{
    xc_domaininfo_t *buf;
    int n, i;

    if (!h || !out || !n_out || max == 0)
        return EINVAL;
    buf = calloc(max, sizeof(*buf));
    if (!buf)
        return ENOMEM;
    n = xc_domain_getinfolist(h->xch, first, max, buf);
    if (n < 0) {
        int saved = err_or(EIO);
        free(buf);
        return saved;
    }
    for (i = 0; i < n; i++)
        fill_dominfo(&buf[i], &out[i]);
    free(buf);
    *n_out = (uint32_t)n;
    return 0;
}

int xp2m_domain_info(xp2m_handle *h, uint32_t domid, xp2m_dominfo *out)
{
    xc_domaininfo_t info;
    int n;

    if (!h || !out)
        return EINVAL;
    n = xc_domain_getinfolist(h->xch, domid, 1, &info);
    if (n < 0)
        return err_or(EIO);
    /* getinfolist returns the next existing domain at or above domid. */
    if (n == 0 || info.domain != domid)
        return ESRCH;
    fill_dominfo(&info, out);
    return 0;
}

int xp2m_own_xenstore_value(xp2m_handle *h, const char *key, char *buf, size_t len)
{
    unsigned int n = 0;
    char *v;

    if (!h || !key || key[0] == '/' || !buf || len == 0)
        return EINVAL;
    if (!h->xsh)
        return ENOTCONN;
    /* xenstored resolves a relative path below the connection's own domain. */
    v = xs_read(h->xsh, XBT_NULL, key, &n);
    if (!v)
        return err_or(ENOENT);
    snprintf(buf, len, "%.*s", (int)n, v);
    free(v);
    return 0;
}

int xp2m_guest_width(xp2m_handle *h, uint32_t domid, uint32_t *width_bytes)
{
    unsigned int w = 0;

    if (!h || !width_bytes)
        return EINVAL;
    if (xc_domain_get_guest_width(h->xch, domid, &w) != 0)
        return err_or(EIO);
    *width_bytes = w;
    return 0;
}

int xp2m_nr_gpfns(xp2m_handle *h, uint32_t domid, uint64_t *nr)
{
    xen_pfn_t n = 0;

    if (!h || !nr)
        return EINVAL;
    if (xc_domain_nr_gpfns(h->xch, domid, &n) != 0)
        return err_or(EIO);
    *nr = n;
    return 0;
}

int xp2m_max_ram_page(xp2m_handle *h, uint64_t *max_page)
{
    unsigned long m = 0;

    if (!h || !max_page)
        return EINVAL;
    if (xc_maximum_ram_page(h->xch, &m) != 0)
        return err_or(EIO);
    *max_page = m;
    return 0;
}

int xp2m_read_shared_info_page(xp2m_handle *h, uint32_t domid, uint64_t frame, uint8_t page[4096])
{
    void *p;

    if (!h || !page)
        return EINVAL;
    p = xc_map_foreign_range(h->xch, domid, XC_PAGE_SIZE, PROT_READ, (unsigned long)frame);
    if (!p)
        return err_or(EFAULT);
    memcpy(page, p, XC_PAGE_SIZE);
    munmap(p, XC_PAGE_SIZE);
    return 0;
}

int xp2m_map_frames(xp2m_handle *h, uint32_t domid, const uint64_t *mfns, uint32_t n, int32_t *errs, void **addr)
{
    void *p;
    int *e;
    uint32_t i;

    if (!h || !mfns || !errs || !addr || n == 0)
        return EINVAL;
    e = calloc(n, sizeof(int));
    if (!e)
        return ENOMEM;
    p = xenforeignmemory_map(h->fmem, domid, PROT_READ, n, (const xen_pfn_t *)mfns, e);
    if (!p) {
        int saved = err_or(EFAULT);
        free(e);
        return saved;
    }
    for (i = 0; i < n; i++)
        errs[i] = e[i] < 0 ? -e[i] : e[i];
    free(e);
    *addr = p;
    return 0;
}

int xp2m_unmap_frames(xp2m_handle *h, void *addr, uint32_t n)
{
    if (!h || !addr)
        return EINVAL;
    if (xenforeignmemory_unmap(h->fmem, addr, n) != 0)
        return err_or(EINVAL);
    return 0;
}

int xp2m_map_m2p(xp2m_handle *h, uint64_t nr_entries, const uint64_t **m2p)
{
    xen_pfn_t *p;

    if (!h || !m2p || nr_entries == 0)
        return EINVAL;
    p = xc_map_m2p(h->xch, (unsigned long)nr_entries, PROT_READ, NULL);
    if (!p)
        return err_or(EFAULT);
    *m2p = (const uint64_t *)p;
    return 0;
}

int xp2m_unmap_m2p(const uint64_t *m2p, size_t mapped_bytes)
{
    if (!m2p)
        return EINVAL;
    if (munmap((void *)m2p, mapped_bytes) != 0)
        return err_or(EINVAL);
    return 0;
}

int xp2m_domain_name(xp2m_handle *h, uint32_t domid, char *buf, size_t len)
{
    char path[64];
    unsigned int n = 0;
    char *v;

    if (!h || !buf || len == 0)
        return EINVAL;
    if (!h->xsh)
        return ENOTCONN;
    snprintf(path, sizeof(path), "/local/domain/%u/name", domid);
    v = xs_read(h->xsh, XBT_NULL, path, &n);
    if (!v)
        return err_or(ENOENT);
    snprintf(buf, len, "%.*s", (int)n, v);
    free(v);
    return 0;
}

const char *xp2m_built_xen_series(void)
{
    return XP2M_XEN_SERIES;
}

uint32_t xp2m_built_domctl_interface(void)
{
    return XEN_DOMCTL_INTERFACE_VERSION;
}

int xp2m_hypervisor_version(xp2m_handle *h, uint32_t *major, uint32_t *minor, char *extra, size_t len)
{
    xen_extraversion_t ev;
    int v;

    if (!h || !major || !minor || !extra || len == 0)
        return EINVAL;
    v = xc_version(h->xch, XENVER_version, NULL);
    if (v < 0)
        return err_or(EIO);
    memset(ev, 0, sizeof(ev));
    if (xc_version(h->xch, XENVER_extraversion, &ev) < 0)
        return err_or(EIO);
    *major = (uint32_t)v >> 16;
    *minor = (uint32_t)v & 0xffff;
    snprintf(extra, len, "%.*s", (int)sizeof(ev), ev);
    return 0;
}

int xp2m_check_domctl(xp2m_handle *h)
{
    unsigned int w = 0;

    if (!h)
        return EINVAL;
    /*
     * Xen answers every domctl whose interface_version is not its own with EACCES, and
     * libxenctrl stamps the version of the headers it was built with. Asking dom0's
     * address size is the cheapest domctl there is, and dom0 always exists.
     */
    if (xc_domain_get_guest_width(h->xch, 0, &w) != 0)
        return err_or(EIO);
    return 0;
}

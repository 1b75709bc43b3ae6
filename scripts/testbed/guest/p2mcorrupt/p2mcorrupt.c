// SPDX-License-Identifier: GPL-2.0
/*
 * Test-bed fault injector for xenp2m, loaded inside a Linux PV guest: makes one P2M
 * entry of its own guest name another valid frame of the same guest, exactly the kind of
 * corruption xenp2m must report (m2p_mismatch at that pfn).
 *
 * Both pages are allocated here and never freed, so no other guest code uses either pfn
 * and the guest keeps running with the damaged entry; the kernel's own mapping of the
 * victim page still points at its original frame, only the published P2M is wrong.
 * Result line on the console: "P2MCORRUPT pfn=0x.. mfn=0x..->0x.. donor_pfn=0x..".
 *
 * Both pages are filled first, each with its own marker ("XTB-PAGE victim pfn=0x..",
 * "XTB-PAGE donor pfn=0x.."), so a saved image shows which content each pfn got: a save
 * that copies the victim pfn from the frame its entry names holds the donor's marker twice
 * and the victim's not at all. The markers are never printed, so the kernel's log buffer
 * cannot add a copy to an image.
 *
 * With leaf=N it damages the P2M's own storage instead: the entry of the pfn whose page
 * holds leaf N of the linear list (entries N*512.. on x86-64) is set to INVALID, or with
 * leaf_other=1 to another frame of this guest. The leaf page stays mapped where the kernel
 * mapped it, so the guest runs on; but m2p[leaf mfn] now names a pfn whose entry is not
 * that frame, which libxenguest's save path refuses ("Bad mfn in p2m_frame_list[N]").
 * Result line: "P2MLEAF leaf=N pfn=0x.. mfn=0x..->0x..".
 *
 * With unmap_victim=1 (one-entry mode only) the kernel's own mapping of the victim page is
 * cleared as well, after the fill: then no page table of the guest names the victim's
 * original frame, which the damaged entry has orphaned. A save normalises every page-table
 * entry through the P2M; an entry naming an orphaned frame cannot be normalised, and a
 * non-live save then leaves that page table out of the image, so the restored kernel
 * faults in the 2 MiB the table maps (seen on 4.17 and 4.20). Without such an entry the
 * restored guest runs, and a kernel thread shows what the restore put at the victim pfn:
 * once the P2M names two different frames for victim and donor (the restore gave each pfn
 * a frame of its own), it maps the victim's new frame and prints its marker:
 * "P2MRESTORED pfn=0x.. mfn=0x.. holds \"XTB-PAGE donor pfn=0x..\"".
 *
 * With fll_none=1 it touches no P2M entry: shared_info's frame-list-list becomes ~0, what
 * Linux publishes when the tools ask for the virtual list only (SIF_VIRT_P2M_4TOOLS), so
 * only the linear list describes the P2M. Result line: "P2MFLL fll=0x..->0x..".
 */
#include <linux/module.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>
#include <xen/xen.h>
#include <linux/kprobes.h>
#include <xen/interface/xen.h>
#include <linux/kthread.h>
#include <linux/delay.h>
#include <asm/xen/page.h>
#include <asm/xen/hypercall.h>

static struct page *victim, *donor;

/*
 * Which of the two pfns is rewritten. A checker walking pfns upwards meets the lower pfn
 * first; both orders matter (which pfn gets blamed for the duplicate frame), so the bed
 * can ask for either.
 */
static bool victim_above;
module_param(victim_above, bool, 0444);
MODULE_PARM_DESC(victim_above, "rewrite the higher of the two pfns (default: the lower)");

static int leaf = -1;
module_param(leaf, int, 0444);
MODULE_PARM_DESC(leaf, "instead: take the frame holding P2M leaf N out of the pseudo-physical map (default -1: off)");

static bool leaf_other;
module_param(leaf_other, bool, 0444);
MODULE_PARM_DESC(leaf_other, "with leaf: point that pfn's entry at another frame of this guest (default: INVALID)");

static bool unmap_victim;
module_param(unmap_victim, bool, 0444);
MODULE_PARM_DESC(unmap_victim, "with the one-entry corruption: also clear the kernel's mapping of the victim page, and report its content after a restore");

static bool fll_none;
module_param(fll_none, bool, 0444);
MODULE_PARM_DESC(fll_none, "instead: publish fll = ~0 (the linear list only)");

static void fill(struct page *p, const char *who, unsigned char byte)
{
	char *va = page_address(p);

	memset(va, byte, PAGE_SIZE);
	snprintf(va, 64, "XTB-PAGE %s pfn=0x%lx", who, page_to_pfn(p));
}

#define LEAF_ENTRIES (PAGE_SIZE / sizeof(unsigned long))

static int __init corrupt_leaf(void)
{
	unsigned long first = (unsigned long)leaf * LEAF_ENTRIES, lpfn, old_mfn, new_mfn;
	struct page *holder;

	if (first >= xen_p2m_size) {
		pr_err("P2MLEAF-FAIL leaf %d is beyond the p2m list (%lu entries)\n", leaf, xen_p2m_size);
		return -ERANGE;
	}
	/* The list is virtually mapped: the page behind this address is the leaf's frame. */
	holder = vmalloc_to_page(&xen_p2m_addr[first]);
	if (!holder) {
		pr_err("P2MLEAF-FAIL leaf %d is not mapped\n", leaf);
		return -EFAULT;
	}
	lpfn = page_to_pfn(holder);
	if (lpfn >= xen_p2m_size) {
		pr_err("P2MLEAF-FAIL leaf page pfn beyond the p2m list\n");
		return -ERANGE;
	}
	old_mfn = READ_ONCE(xen_p2m_addr[lpfn]);
	new_mfn = INVALID_P2M_ENTRY;
	if (leaf_other) {
		donor = alloc_page(GFP_KERNEL);
		if (!donor) {
			pr_err("P2MLEAF-FAIL no page\n");
			return -ENOMEM;
		}
		new_mfn = READ_ONCE(xen_p2m_addr[page_to_pfn(donor)]);
	}
	WRITE_ONCE(xen_p2m_addr[lpfn], new_mfn);
	pr_emerg("P2MLEAF leaf=%d pfn=0x%lx mfn=0x%lx->0x%lx\n", leaf, lpfn, old_mfn, new_mfn);
	return 0;
}

/*
 * HYPERVISOR_shared_info is not exported to modules, and kallsyms_lookup_name no longer is
 * (5.7): a kprobe on it yields its address, the usual way for a test module to reach a
 * private symbol.
 */
static unsigned long lookup_symbol(const char *name)
{
	typedef unsigned long (*lookup_fn)(const char *);
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	lookup_fn lookup;

	if (register_kprobe(&kp) < 0)
		return 0;
	lookup = (lookup_fn)kp.addr;
	unregister_kprobe(&kp);
	return lookup ? lookup(name) : 0;
}

static int __init publish_no_fll(void)
{
	struct shared_info **sip = (struct shared_info **)lookup_symbol("HYPERVISOR_shared_info");
	unsigned long old_fll;

	if (!sip || !*sip) {
		pr_err("P2MFLL-FAIL HYPERVISOR_shared_info not found\n");
		return -ENOENT;
	}
	old_fll = READ_ONCE((*sip)->arch.pfn_to_mfn_frame_list_list);
	WRITE_ONCE((*sip)->arch.pfn_to_mfn_frame_list_list, ~0UL);
	pr_emerg("P2MFLL fll=0x%lx->0x%lx\n", old_fll, ~0UL);
	return 0;
}

/*
 * Runs in the original guest and, after a save and restore, in the restored one. The
 * original's P2M names the donor's frame for both pfns; a restore allocates a frame per
 * pfn and rewrites the P2M, so two different entries mean "restored". The victim's
 * mapping was cleared, so it is made anew on the frame the restored P2M names.
 */
static int restore_watch(void *unused)
{
	unsigned long vpfn = page_to_pfn(victim), dpfn = page_to_pfn(donor), mfn;
	char *va = page_address(victim), seen[64];
	int rc;

	while (!kthread_should_stop()) {
		msleep(1000);
		mfn = READ_ONCE(xen_p2m_addr[vpfn]);
		if (mfn == READ_ONCE(xen_p2m_addr[dpfn]))
			continue;
		rc = HYPERVISOR_update_va_mapping((unsigned long)va, mfn_pte(mfn, PAGE_KERNEL), UVMF_INVLPG);
		if (rc) {
			pr_emerg("P2MRESTORED-FAIL pfn=0x%lx mfn=0x%lx: remap rc %d\n", vpfn, mfn, rc);
			return 0;
		}
		memcpy(seen, va, sizeof(seen) - 1);
		seen[sizeof(seen) - 1] = 0;
		/* Printed once; the marker text cut at its end, never the rest of the page. */
		pr_emerg("P2MRESTORED pfn=0x%lx mfn=0x%lx holds \"%.40s\"\n", vpfn, mfn, seen);
		return 0;
	}
	return 0;
}

static int __init p2mcorrupt_init(void)
{
	unsigned long vpfn, dpfn, old_mfn, new_mfn;

	if (!xen_pv_domain()) {
		pr_err("P2MCORRUPT-FAIL not a Xen PV guest\n");
		return -ENODEV;
	}
	if (fll_none)
		return publish_no_fll();
	if (leaf >= 0)
		return corrupt_leaf();
	victim = alloc_page(GFP_KERNEL);
	donor = alloc_page(GFP_KERNEL);
	if (!victim || !donor) {
		pr_err("P2MCORRUPT-FAIL no pages\n");
		return -ENOMEM;
	}
	if ((page_to_pfn(victim) > page_to_pfn(donor)) != victim_above)
		swap(victim, donor);
	vpfn = page_to_pfn(victim);
	dpfn = page_to_pfn(donor);
	if (vpfn >= xen_p2m_size || dpfn >= xen_p2m_size) {
		pr_err("P2MCORRUPT-FAIL pfn beyond the p2m list\n");
		return -ERANGE;
	}
	fill(victim, "victim", 0x11);
	fill(donor, "donor", 0x22);
	old_mfn = READ_ONCE(xen_p2m_addr[vpfn]);
	new_mfn = READ_ONCE(xen_p2m_addr[dpfn]);
	/* The list is the storage the tree's leaves share, so one store changes both. */
	if (unmap_victim) {
		int rc = HYPERVISOR_update_va_mapping((unsigned long)page_address(victim), __pte(0), UVMF_INVLPG);

		if (rc) {
			pr_err("P2MCORRUPT-FAIL unmapping the victim page: rc %d\n", rc);
			return -EIO;
		}
	}
	WRITE_ONCE(xen_p2m_addr[vpfn], new_mfn);
	pr_emerg("P2MCORRUPT pfn=0x%lx mfn=0x%lx->0x%lx donor_pfn=0x%lx%s\n",
		 vpfn, old_mfn, new_mfn, dpfn, unmap_victim ? " unmapped" : "");
	if (unmap_victim)
		kthread_run(restore_watch, NULL, "p2mrestorewatch");
	return 0;
}
module_init(p2mcorrupt_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("xenp2m test bed: corrupt one P2M entry, or the P2M's own storage, of this PV guest");

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
 */
#include <linux/module.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <xen/xen.h>
#include <asm/xen/page.h>

static struct page *victim, *donor;

/*
 * Which of the two pfns is rewritten. A checker walking pfns upwards meets the lower pfn
 * first; both orders matter (which pfn gets blamed for the duplicate frame), so the bed
 * can ask for either.
 */
static bool victim_above;
module_param(victim_above, bool, 0444);
MODULE_PARM_DESC(victim_above, "rewrite the higher of the two pfns (default: the lower)");

static int __init p2mcorrupt_init(void)
{
	unsigned long vpfn, dpfn, old_mfn, new_mfn;

	if (!xen_pv_domain()) {
		pr_err("P2MCORRUPT-FAIL not a Xen PV guest\n");
		return -ENODEV;
	}
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
	old_mfn = READ_ONCE(xen_p2m_addr[vpfn]);
	new_mfn = READ_ONCE(xen_p2m_addr[dpfn]);
	/* The list is the storage the tree's leaves share, so one store changes both. */
	WRITE_ONCE(xen_p2m_addr[vpfn], new_mfn);
	pr_emerg("P2MCORRUPT pfn=0x%lx mfn=0x%lx->0x%lx donor_pfn=0x%lx\n",
		 vpfn, old_mfn, new_mfn, dpfn);
	return 0;
}
module_init(p2mcorrupt_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("xenp2m test bed: corrupt one P2M entry of this PV guest");

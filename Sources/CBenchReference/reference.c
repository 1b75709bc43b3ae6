#include "xenp2m_bench_ref.h"

/* One body for both widths: the entry type and its flag bits are the only difference. */
#define REF_BODY(ENTRY_T, ALL_ONES, FOREIGN, IDENTITY)                                  \
    uint64_t limit = max_mfn < m2p_len - 1 ? max_mfn : m2p_len - 1;                      \
    xp2m_ref_counts c = {0, 0, 0, 0, 0};                                                 \
    uint64_t dups = 0;                                                                   \
    for (uint64_t pfn = 0; pfn < n; pfn++) {                                             \
        uint64_t e = (uint64_t)entries[pfn];                                             \
        if (e == (ALL_ONES)) { c.invalid++; continue; }                                  \
        if (e & (FOREIGN)) { c.foreign++; continue; }                                    \
        if (e & (IDENTITY)) {                                                            \
            if ((e & ~(uint64_t)(IDENTITY)) == pfn) c.identity++; else c.faulty++;       \
            continue;                                                                    \
        }                                                                                \
        if (m2p_len == 0 || e > limit) { c.faulty++; continue; }                         \
        uint64_t bit = 1ull << (e & 63);                                                 \
        int claimed = (bitmap[e >> 6] & bit) != 0;                                       \
        bitmap[e >> 6] |= bit;                                                           \
        if (m2p[e] != pfn) { c.faulty++; dups += claimed; continue; }                    \
        dups += claimed;                                                                 \
        c.valid++;                                                                       \
    }                                                                                    \
    c.duplicates = dups;                                                                 \
    *out = c;

void xp2m_ref_check64(const uint64_t *entries, uint64_t n, const uint64_t *m2p, uint64_t m2p_len,
                      uint64_t max_mfn, uint64_t *bitmap, xp2m_ref_counts *out)
{
    REF_BODY(uint64_t, ~0ull, 1ull << 63, 1ull << 62)
}

void xp2m_ref_check32(const uint32_t *entries, uint64_t n, const uint64_t *m2p, uint64_t m2p_len,
                      uint64_t max_mfn, uint64_t *bitmap, xp2m_ref_counts *out)
{
    REF_BODY(uint32_t, 0xffffffffull, 1ull << 31, 1ull << 30)
}

/*
 * The physical floor: read each entry and the M2P entry it names, nothing else. The
 * clamp keeps a bad entry inside the table without a branch the compiler must keep.
 */
uint64_t xp2m_floor64(const uint64_t *entries, uint64_t n, const uint64_t *m2p, uint64_t m2p_len)
{
    uint64_t sum = 0, last = m2p_len - 1;
    for (uint64_t pfn = 0; pfn < n; pfn++) {
        uint64_t e = entries[pfn];
        sum += m2p[e < last ? e : last];
    }
    return sum;
}

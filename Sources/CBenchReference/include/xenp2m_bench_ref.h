/*
 * The C reference loop for xenp2m's benchmark: the same per-entry work as the
 * engine's leaf check (classification, M2P round trip, duplicate bitmap), written
 * plainly so the ratio engine / C shows what the Swift code costs.
 */
#ifndef XENP2M_BENCH_REF_H
#define XENP2M_BENCH_REF_H
#include <stdint.h>

typedef struct {
    uint64_t valid, invalid, identity, foreign, faulty;
    /* Second claims of a frame (the engine reports them as duplicate_mfn). */
    uint64_t duplicates;
} xp2m_ref_counts;

void xp2m_ref_check64(const uint64_t *entries, uint64_t n, const uint64_t *m2p, uint64_t m2p_len,
                      uint64_t max_mfn, uint64_t *bitmap, xp2m_ref_counts *out);
void xp2m_ref_check32(const uint32_t *entries, uint64_t n, const uint64_t *m2p, uint64_t m2p_len,
                      uint64_t max_mfn, uint64_t *bitmap, xp2m_ref_counts *out);
/* The floor: streams the entries and the M2P entries they name, no checks (returns a
 * sum so the loads cannot be dropped). m2p_len must be > 0. */
uint64_t xp2m_floor64(const uint64_t *entries, uint64_t n, const uint64_t *m2p, uint64_t m2p_len);
#endif

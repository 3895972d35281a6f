/*
 * How the hidden units of a layer are cut into thread slices, in one place.
 *
 * A time loop (layer.c) and a single step (step.c) cut the H hidden units into n_slices slices
 * whose sizes are multiples of one cache line of the element type, so that no two threads write
 * the same line of a state or gate row. Thread `me` of a team of `team` owns slices me,
 * me + team, me + 2 team, ...: when contention shrinks the team (barrier.h), the slices stay
 * the same and each thread takes more of them, so results never depend on the team size.
 */
#ifndef CGRU_SLICES_H
#define CGRU_SLICES_H

/* Start of block k when n items are cut into `parts` blocks whose size is a multiple of `unit`
 * (the last block takes the rest; trailing blocks are empty when n is small). */
static inline int cgru_block_start(int k, int n, int parts, int unit)
{
    int per = (n + parts - 1) / parts;
    per = (per + unit - 1) / unit * unit;
    long start = (long)k * per;
    return start < n ? (int)start : n;
}

/* Elements of one 64-byte cache line: the unit of thread slices and padding. real_begin.h's
 * ALIGN is this for the dtype being compiled; layer.c's workspace sizes use it for both. */
#define CGRU_LINE_ELEMS(elem_size) (64 / (int)(elem_size))

/* Slices of H units for a call that may use n_threads threads: no more than whole lines. */
static inline int cgru_slice_count(int n_threads, int H, int line)
{
    int most = H / line;
    if (most < 1) most = 1;
    if (n_threads < 1) n_threads = 1;
    return n_threads < most ? n_threads : most;
}

/*
 * for_each_own_slice(j0, j1, me, team, n_slices, H, line) { ... }
 * runs its body once for each non-empty slice [j0, j1) of hidden units that thread `me` of a team
 * of `team` owns (see above); j0 and j1 are declared by the macro.
 */
#define for_each_own_slice(j0, j1, me, team, n_slices, H, line)                                  \
    for (int slice_k_ = (me), j0, j1; slice_k_ < (n_slices); slice_k_ += (team))              \
        if ((j0 = cgru_block_start(slice_k_, (H), (n_slices), (line))),                       \
            (j1 = cgru_block_start(slice_k_ + 1, (H), (n_slices), (line))), j1 > j0)

/* The slice index inside for_each_own_slice's body (where packed weights are per slice). */
#define own_slice_index slice_k_

#endif

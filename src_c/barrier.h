/*
 * The barrier that the threads of one parallel region pass at every time step, and the way a
 * team that stalls there goes on with one thread.
 *
 * libgomp's `#pragma omp barrier` ends in a futex wake system call on every pass, whether or not a
 * thread sleeps: measured on the 2-core development VM, 0.25-0.45 us per pass against 0.03-0.16 us
 * for this one. At B = 1 a time step's work is about 1 us, so the system call was a fifth of it.
 *
 * A pass: every thread adds itself to `arrivals`; the last one resets it and publishes a new
 * `release` word, which the others wait on. The last arriver's read-modify-write acquires every
 * other thread's release, and its release store is what the waiters acquire, so everything any
 * thread wrote before the barrier is visible to every thread after it.
 *
 * Waiting, measured against the waiter's own work since the previous pass (`work`):
 *   1. spin with a pause instruction: on a quiet machine the others arrive within a fraction of
 *      `work`. A waiter does not sleep here: on a core that another process keeps busy, a thread
 *      woken from a futex waits for that process's time slice to end (milliseconds), and would
 *      pay that at every step.
 *   2. when the wait passes STALL_FACTOR x work (at least STALL_MIN_NS), a team-mate has been
 *      descheduled: a long wait (one per pass, however many threads wait in it). The waiter asks
 *      to go on alone when this is at least the call's second long wait and the long waits have
 *      cost more than STALL_SHARE of the time loop so far (counted over at least
 *      STALL_WINDOW_NS): other processes are then sharing the cores.
 *      Short, sparse ones are hiccups (a virtual CPU woken from idle, the hypervisor taking the
 *      CPU for a moment: measured on the 2-core development VM with nothing else running, 13-170
 *      gaps over 0.1 ms per second and CPU, the longest 1-7 ms, 1.6-5.4 % of its time), and
 *      waiting them out keeps the team's speed. Going on alone at the second of them, as an
 *      earlier rule did, ran 9 of 47 forward calls of (T, B, I, H) = (100, 64, 128, 256) there
 *      partly on one thread in a quiet run, and 14-33 of 100 while each CPU was busy 1 ms in every
 *      20 (bench/contention.py), where 2 threads then ran no faster than 1 (0.98x; 0.56-0.70x with
 *      this rule). The last arriver (the late thread, when it finally comes) publishes the request
 *      with the release, so every thread reads the same decision: the asker carries on with every
 *      slice of the work as thread 0 of a team of 1, and the others leave the loop. A stalled call
 *      pays a few scheduler delays instead of one per step, and threads.c runs the next calls on
 *      one thread when stalls repeat over calls.
 *   3. an asker spins on for up to SPIN_AFTER_ASK_NS, to be running when the late thread
 *      arrives, then sleeps on a futex in short naps (the last arriver wakes sleepers, making the
 *      system call only when someone sleeps).
 *
 * All threads of a team must pass every barrier with the same member state (team size), as
 * cgru_barrier_pass keeps it.
 */
#ifndef CGRU_BARRIER_H
#define CGRU_BARRIER_H

#include <stdatomic.h>
#include <stdint.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#define CGRU_HAVE_FUTEX 1
#elif defined(__unix__) || defined(__APPLE__)
#include <sched.h>
#include <time.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define CGRU_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CGRU_PAUSE() __asm__ __volatile__("yield")
#else
#define CGRU_PAUSE() ((void)0)
#endif

#define CGRU_STALL_MIN_NS 100000.0
#define CGRU_STALL_FACTOR 3
#define CGRU_STALL_SHARE 0.25
#define CGRU_STALL_WINDOW_NS 10000000.0
#define CGRU_SPIN_AFTER_ASK_NS 2000000.0
#define CGRU_NAP_NS 500000.0

/* threads.c: ticks of cgru_ticks() per nanosecond, and the test hook below */
extern double cgru_ticks_per_ns;
extern int cgru_solo_test_pass;

/* A cheap monotonic clock: the time-stamp counter on x86, nanoseconds elsewhere. */
static inline uint64_t cgru_ticks(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return __rdtsc();
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

typedef struct {
    _Alignas(64) atomic_uint arrivals;  /* bits 0-15: threads arrived; 16-31: 1 + the asker */
    _Alignas(64) atomic_uint release;   /* futex word: generation << 16 | 1 + the survivor, or 0 */
    atomic_int sleepers;
    atomic_int stalled;                 /* the team went on alone because a thread was late */
    atomic_int long_waits;              /* passes with a wait past the stall threshold */
    atomic_uint long_pass;              /* 1 + the generation of the last such pass */
    _Atomic uint64_t lost;              /* ticks of wall time in finished long waits: each of
                                           the team - 1 waiters of a pass adds its share */
    uint64_t began;                     /* ticks when the time loop began */
    atomic_int passes;                  /* barriers passed, for the test hook */
} cgru_barrier;

/* One thread's view of its team, on its own stack: its number, the team size, and when it left
 * the previous barrier. */
typedef struct {
    int me, team;
    uint64_t left_at;
} cgru_member;

static inline void cgru_barrier_init(cgru_barrier *bar)
{
    atomic_init(&bar->arrivals, 0u);
    atomic_init(&bar->release, 0u);
    atomic_init(&bar->sleepers, 0);
    atomic_init(&bar->stalled, 0);
    atomic_init(&bar->long_waits, 0);
    atomic_init(&bar->long_pass, 0u);
    atomic_init(&bar->lost, 0);
    bar->began = cgru_ticks();
    atomic_init(&bar->passes, 0);
}

static inline cgru_member cgru_member_of(int me, int team)
{
    cgru_member m = {me, team, cgru_ticks()};
    return m;
}

static inline void cgru_futex_wait(atomic_uint *word, unsigned expected, double timeout_ns)
{
#ifdef CGRU_HAVE_FUTEX
    struct timespec ts;
    if (timeout_ns < 1000) timeout_ns = 1000;
    ts.tv_sec = (time_t)(timeout_ns / 1e9);
    ts.tv_nsec = (long)(timeout_ns - (double)ts.tv_sec * 1e9);
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT_PRIVATE, expected, &ts, 0, 0);
#elif defined(__unix__) || defined(__APPLE__)
    (void)word; (void)expected; (void)timeout_ns;
    sched_yield();
#else
    (void)word; (void)expected; (void)timeout_ns;
#endif
}

static inline void cgru_futex_wake_all(atomic_uint *word)
{
#ifdef CGRU_HAVE_FUTEX
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE_PRIVATE, 0x7fffffff, 0, 0, 0);
#else
    (void)word;
#endif
}

/* Whether a waiter in a long wait asks to go on alone (see the top of this file): this is not the
 * call's first long wait, and the long waits' wall time, this one's so far included (`lost`), is
 * more than STALL_SHARE of the time loop so far (`so_far`), counted over `window` at least. Any
 * one unit of time for all three. */
static inline int cgru_stall_asks(int earlier_long_waits, double lost, double so_far, double window)
{
    return earlier_long_waits >= 1 && lost > CGRU_STALL_SHARE * (so_far > window ? so_far : window);
}

/* After a pass: 1 when this thread goes on (as the whole team's member, or alone as thread 0 of
 * a team of 1), 0 when it leaves because the team goes on without it. */
static inline int cgru_barrier_settle(cgru_member *m, unsigned word)
{
    m->left_at = cgru_ticks();
    unsigned survivor = word & 0xFFFFu;
    if (survivor == 0) return 1;
    if (m->me != (int)survivor - 1) return 0;
    m->me = 0;
    m->team = 1;
    return 1;
}

/* Ask, once, that the asker go on alone after this pass (see the top of this file); not once the
 * last arriver has closed the pass (its count is back to 0), where the request would land in the
 * next pass. */
static inline void cgru_barrier_ask(cgru_barrier *bar, int me)
{
    unsigned seen = atomic_load_explicit(&bar->arrivals, memory_order_relaxed);
    while ((seen >> 16) == 0 && (seen & 0xFFFFu) != 0 &&
           !atomic_compare_exchange_weak_explicit(&bar->arrivals, &seen,
                                                  seen | ((unsigned)(me + 1) << 16),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* Ticks from `since` to `until`, 0 where a clock read on another core is a little ahead. */
static inline double cgru_ticks_between(uint64_t since, uint64_t until)
{
    return until > since ? (double)(until - since) : 0.0;
}

static inline int cgru_barrier_pass(cgru_barrier *bar, cgru_member *m)
{
    const int team = m->team;
    if (team <= 1) return 1;
    const uint64_t arrived_at = cgru_ticks();
    const double work = cgru_ticks_between(m->left_at, arrived_at);
    const unsigned before = atomic_load_explicit(&bar->release, memory_order_acquire);
    const unsigned old = atomic_fetch_add_explicit(&bar->arrivals, 1u, memory_order_acq_rel);
    if ((int)(old & 0xFFFFu) == team - 1) {
        unsigned asker = old >> 16;
        if (asker) atomic_store_explicit(&bar->stalled, 1, memory_order_relaxed);
        int pass = atomic_fetch_add_explicit(&bar->passes, 1, memory_order_relaxed) + 1;
        if (!asker && cgru_solo_test_pass && pass == cgru_solo_test_pass) asker = (unsigned)team;
        atomic_store_explicit(&bar->arrivals, 0u, memory_order_relaxed);
        const unsigned word = (((before >> 16) + 1u) << 16) | asker;
        atomic_store_explicit(&bar->release, word, memory_order_seq_cst);
        if (atomic_load_explicit(&bar->sleepers, memory_order_seq_cst) > 0)
            cgru_futex_wake_all(&bar->release);
        return cgru_barrier_settle(m, word);
    }
    const double per_ns = cgru_ticks_per_ns;
    double stall = CGRU_STALL_FACTOR * work;
    if (stall < CGRU_STALL_MIN_NS * per_ns) stall = CGRU_STALL_MIN_NS * per_ns;
    const double nap_from = stall + CGRU_SPIN_AFTER_ASK_NS * per_ns;
    const double window = CGRU_STALL_WINDOW_NS * per_ns;
    int counted = 0, asked = 0, earlier_long_waits = 0;
    double waited = 0;
    unsigned now;
    while ((now = atomic_load_explicit(&bar->release, memory_order_acquire)) == before) {
        const uint64_t clock = cgru_ticks();
        waited = cgru_ticks_between(arrived_at, clock);
        if (waited < stall) {
            CGRU_PAUSE();
            continue;
        }
        if (!counted) {
            /* the first waiter of this pass to get here counts the pass */
            counted = 1;
            const unsigned pass_mark = (before >> 16) + 1u;
            const unsigned marked = atomic_exchange_explicit(&bar->long_pass, pass_mark,
                                                             memory_order_relaxed);
            if (marked != pass_mark)
                atomic_fetch_add_explicit(&bar->long_waits, 1, memory_order_relaxed);
            earlier_long_waits = atomic_load_explicit(&bar->long_waits, memory_order_relaxed) - 1;
        }
        const double lost = (double)atomic_load_explicit(&bar->lost, memory_order_relaxed) + waited;
        if (!asked && cgru_stall_asks(earlier_long_waits, lost,
                                      cgru_ticks_between(bar->began, clock), window)) {
            asked = 1;
            cgru_barrier_ask(bar, m->me);
        }
        if (waited < nap_from) {
            CGRU_PAUSE();
            continue;
        }
        atomic_fetch_add_explicit(&bar->sleepers, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&bar->release, memory_order_seq_cst) == before)
            cgru_futex_wait(&bar->release, before, CGRU_NAP_NS);
        atomic_fetch_sub_explicit(&bar->sleepers, 1, memory_order_relaxed);
    }
    /* the wall time lost to this pass: each of the team - 1 waiters adds its share */
    if (counted) {
        waited = cgru_ticks_between(arrived_at, cgru_ticks());
        const uint64_t share = (uint64_t)(waited / (team - 1));
        atomic_fetch_add_explicit(&bar->lost, share, memory_order_relaxed);
    }
    return cgru_barrier_settle(m, now);
}

/* The same evidence for a region without per-step barriers (a split GEMM): each thread notes when
 * it finished; threads that finished far apart (the late one took STALL_FACTOR times the early
 * one's time more, and at least STALL_MIN_NS more) were held up by a descheduled thread. */
typedef struct {
    uint64_t start;
    _Atomic uint64_t first, last;
} cgru_finish_spread;

static inline void cgru_finish_spread_init(cgru_finish_spread *f)
{
    f->start = cgru_ticks();
    atomic_init(&f->first, UINT64_MAX);
    atomic_init(&f->last, 0);
}

static inline void cgru_finish_spread_note(cgru_finish_spread *f)
{
    uint64_t now = cgru_ticks(), seen = atomic_load_explicit(&f->first, memory_order_relaxed);
    while (now < seen && !atomic_compare_exchange_weak_explicit(&f->first, &seen, now,
                                                                memory_order_relaxed,
                                                                memory_order_relaxed))
        ;
    seen = atomic_load_explicit(&f->last, memory_order_relaxed);
    while (now > seen && !atomic_compare_exchange_weak_explicit(&f->last, &seen, now,
                                                                memory_order_relaxed,
                                                                memory_order_relaxed))
        ;
}

static inline int cgru_finish_spread_stalled(cgru_finish_spread *f)
{
    uint64_t first = atomic_load(&f->first), last = atomic_load(&f->last);
    if (first == UINT64_MAX || last <= first) return 0;
    double spread = (double)(last - first), early = (double)(first - f->start);
    return spread > CGRU_STALL_MIN_NS * cgru_ticks_per_ns && spread > CGRU_STALL_FACTOR * early;
}

#endif

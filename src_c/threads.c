/*
 * How many threads an engine call gets, and what happens to them across fork.
 *
 * OpenMP owns the cores: every parallel region of cgru runs with the count an engine call
 * reserved here, and BLAS is called single-threaded inside them (the Cython layer caps SciPy's
 * OpenBLAS at one thread while an engine call runs).
 *
 * A call asks for cgru_get_num_threads() and gets fewer when
 *   - the process may use fewer CPUs (its affinity mask, its cgroup's CPU quota): more threads
 *     than CPUs only makes every per-step barrier wait for a descheduled thread;
 *   - other engine calls (other Python threads) already hold the available CPUs: each call then
 *     gets what is left, at least one thread;
 *   - recent calls' teams stalled at a barrier (barrier.h: a thread was descheduled because other
 *     processes share the cores), three calls in a row: calls run on one thread for a back-off
 *     period that doubles while stalls repeat (up to CALM_MAX_NS) and is probed again after it.
 *     A stall or two (a virtual CPU woken from idle at the start of a burst of calls) only cost
 *     the calls they hit.
 *
 * fork: GNU OpenMP keeps a pool of worker threads per thread that opened a parallel region, and a
 * child made by fork() inherits the pool's bookkeeping but not its threads, so its first
 * parallel region waits for ever. Before a fork, the forking thread's pool is released
 * (omp_pause_resource_all, OpenMP 5.0); the parent rebuilds it on its next region (a few tens of
 * microseconds) and the child builds its own. Where the runtime cannot release it, the child runs
 * the engine on one thread (cgru_fork_serial() tells the Python layer, which warns once).
 *
 * A fork also waits for the engine calls that other threads are running (and holds new ones at
 * their start until it is done): a thread inside BLAS at the fork can hold OpenBLAS's buffer lock,
 * which then stays locked for ever in the child, where that thread does not exist, and the
 * child's first BLAS call waits for it (measured: a child forked while two threads ran small
 * forwards hung in OpenBLAS's blas_memory_alloc within a few hundred forks). Every call is a plan
 * (cgru_plan_begin or cgru_plan_serial to cgru_plan_end), and a plan is a call in flight.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "barrier.h"
#include "threads.h"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
#endif
#ifdef __linux__
#include <sched.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

static int engine_threads = 0;  /* 0: not set, follow OpenMP's default (OMP_NUM_THREADS) */

int cgru_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int cgru_get_num_threads(void)
{
#ifdef _OPENMP
    if (cgru_fork_serial()) return 1;
    return engine_threads > 0 ? engine_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

void cgru_set_num_threads(int n_threads)
{
    engine_threads = n_threads > 0 ? n_threads : 0;
}

/* ---- clock ------------------------------------------------------------------------------------ */

double cgru_ticks_per_ns = 1.0;

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Ticks per nanosecond of cgru_ticks(), measured once over a fifth of a millisecond. */
static void calibrate_ticks(void)
{
#if defined(__x86_64__) || defined(__i386__)
    uint64_t t0 = monotonic_ns(), k0 = cgru_ticks(), t1;
    do t1 = monotonic_ns(); while (t1 - t0 < 200000);
    uint64_t k1 = cgru_ticks();
    double ratio = (double)(k1 - k0) / (double)(t1 - t0);
    cgru_ticks_per_ns = ratio > 0.05 && ratio < 100 ? ratio : 1.0;
#endif
}

/* ---- CPUs available ------------------------------------------------------------------------- */

static int cgroup_cpus = 0;        /* CPUs the cgroup's quota allows, 0 when unlimited */
static int cpus_override = 0;      /* tests: pretend this many CPUs (0: the real count) */
static _Atomic int cached_cpus = 0;
static _Atomic uint64_t cached_at = 0;

#define CPUS_REFRESH_NS 100000000u  /* affinity is read again after 100 ms */

/* ceil(quota / period) from cgroup v2's cpu.max ("max 100000" or "150000 100000") or v1's
 * cpu.cfs_quota_us and cpu.cfs_period_us; 0 when there is no limit or no cgroup file. */
static int read_cgroup_cpus(void)
{
#ifdef __linux__
    long quota = -1, period = 0;
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (f) {
        char first[32] = {0};
        if (fscanf(f, "%31s %ld", first, &period) == 2 && first[0] != 'm')
            sscanf(first, "%ld", &quota);
        fclose(f);
    } else {
        f = fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r");
        if (f) {
            if (fscanf(f, "%ld", &quota) != 1) quota = -1;
            fclose(f);
        }
        f = fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r");
        if (f) {
            if (fscanf(f, "%ld", &period) != 1) period = 0;
            fclose(f);
        }
    }
    if (quota > 0 && period > 0) return (int)((quota + period - 1) / period);
#endif
    return 0;
}

int cgru_cpus_available(void)
{
    if (cpus_override > 0) return cpus_override;
    uint64_t now = monotonic_ns();
    int cpus = atomic_load_explicit(&cached_cpus, memory_order_relaxed);
    if (cpus > 0 && now - atomic_load_explicit(&cached_at, memory_order_relaxed) < CPUS_REFRESH_NS)
        return cpus;
    cpus = 0;
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = CPU_COUNT(&set);
#endif
#if defined(__unix__) || defined(__APPLE__)
    if (cpus <= 0) cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
#endif
    if (cpus <= 0) cpus = 1;
    if (cgroup_cpus > 0 && cgroup_cpus < cpus) cpus = cgroup_cpus;
    atomic_store_explicit(&cached_cpus, cpus, memory_order_relaxed);
    atomic_store_explicit(&cached_at, now, memory_order_relaxed);
    return cpus;
}

void cgru_set_cpus_override(int cpus) { cpus_override = cpus > 0 ? cpus : 0; }

/* ---- reservations ---------------------------------------------------------------------------- */

#define CALM_MIN_NS 10000000u     /* first back-off after a stall: 10 ms */
#define CALM_MAX_NS 1000000000u   /* longest back-off: 1 s */

static _Atomic int threads_in_use = 0;       /* threads held by engine calls now running */
static _Atomic uint64_t calm_until = 0;      /* before this time, calls run on one thread */
static _Atomic uint64_t calm_period = CALM_MIN_NS;
static _Atomic long stalls_seen = 0;
static _Atomic int stalls_in_a_row = 0;     /* multi-thread calls that stalled, consecutively */

/* Threads for a call cut into `parts`: fewer while recent calls stalled, or while other calls
 * hold the CPUs (then what they leave, at least one). */
static _Atomic int teams_started = 0;        /* 1 once a call ran a team of several threads */

static int threads_begin(int parts)
{
    int want = parts;
    if (want > 1 && monotonic_ns() < atomic_load_explicit(&calm_until, memory_order_relaxed))
        want = 1;
    int before = atomic_fetch_add_explicit(&threads_in_use, want, memory_order_relaxed);
    if (want > 1 && before > 0) {
        int left = cgru_cpus_available() - before;
        int got = left < 1 ? 1 : (left < want ? left : want);
        atomic_fetch_sub_explicit(&threads_in_use, want - got, memory_order_relaxed);
        want = got;
    }
    if (want > 1 && !atomic_load_explicit(&teams_started, memory_order_relaxed))
        atomic_store_explicit(&teams_started, 1, memory_order_relaxed);
    return want;
}

static void threads_end(int got, int stalled)
{
    atomic_fetch_sub_explicit(&threads_in_use, got, memory_order_relaxed);
    if (stalled) atomic_fetch_add_explicit(&stalls_seen, 1, memory_order_relaxed);
    if (stalled && atomic_fetch_add_explicit(&stalls_in_a_row, 1, memory_order_relaxed) >= 2) {
        /* the third stalled call in a row */
        uint64_t period = atomic_load_explicit(&calm_period, memory_order_relaxed);
        atomic_store_explicit(&calm_until, monotonic_ns() + period, memory_order_relaxed);
        atomic_store_explicit(&calm_period, period * 2 < CALM_MAX_NS ? period * 2 : CALM_MAX_NS,
                              memory_order_relaxed);
    } else if (!stalled && got > 1) {
        atomic_store_explicit(&stalls_in_a_row, 0, memory_order_relaxed);
        atomic_store_explicit(&calm_period, CALM_MIN_NS, memory_order_relaxed);
    }
}

static void call_begin(void);
static void call_end(void);

cgru_plan cgru_plan_begin(int n_threads)
{
    call_begin();
    cgru_plan plan;
    int cpus = cgru_cpus_available();
    plan.parts = n_threads < 1 ? 1 : (n_threads < cpus ? n_threads : cpus);
    if (cgru_fork_serial()) plan.parts = 1;
    plan.threads = threads_begin(plan.parts);
    plan.stalled = 0;
    plan.reserved = 1;
    return plan;
}

cgru_plan cgru_plan_serial(void)
{
    call_begin();
    return (cgru_plan){1, 1, 0, 0};
}

void cgru_plan_end(cgru_plan plan, int stalled)
{
    if (plan.reserved) threads_end(plan.threads, stalled);
    call_end();
}

long cgru_stalls_seen(void) { return atomic_load_explicit(&stalls_seen, memory_order_relaxed); }

void cgru_reset_contention(void)
{
    atomic_store_explicit(&calm_until, 0, memory_order_relaxed);
    atomic_store_explicit(&calm_period, CALM_MIN_NS, memory_order_relaxed);
    atomic_store_explicit(&stalls_in_a_row, 0, memory_order_relaxed);
}

/* ---- fork ----------------------------------------------------------------------------------- */

/* omp_pause_resource_all is OpenMP 5.0; GCC's libgomp has it from GCC 9 while still reporting
 * _OPENMP 201511. LLVM's libomp (clang, Apple clang) resets itself in a fork child, and with it
 * a child forked after omp_pause_resource_all hangs (tests/test_fork.py, clang 14 + libomp 14),
 * so clang builds leave the pool to libomp. */
#if defined(_OPENMP) && !defined(__clang__) && (_OPENMP >= 201811 || \
                                                (defined(__GNUC__) && __GNUC__ >= 9))
#define CGRU_PAUSE_BEFORE_FORK 1
#elif defined(_OPENMP) && defined(__clang__)
#define CGRU_RUNTIME_SURVIVES_FORK 1
#endif

#if defined(CGRU_RUNTIME_SURVIVES_FORK)
#include <stdlib.h>
#include <strings.h>
/* libomp re-creates its thread pool in a fork child by atfork handlers that it registers when it
 * starts, unless KMP_INIT_AT_FORK is false then (joblib and scikit-learn set it to FALSE when they
 * are imported); without them a child's first parallel region after the parent's teams waits for
 * ever. Read at the fork, it may have been set after libomp started: the child then runs serially
 * where it need not, which is safe. */
static int libomp_resets_at_fork(void)
{
    const char *v = getenv("KMP_INIT_AT_FORK");
    if (v == NULL) return 1;
    return !(v[0] == '0' || v[0] == 'f' || v[0] == 'F' || v[0] == 'n' || v[0] == 'N' ||
             v[0] == '.' || strncasecmp(v, "off", 2) == 0 || strncasecmp(v, "disable", 7) == 0);
}
#endif

static int pool_released_for_fork = 1;
static int fork_serial = 0;

/* The gate between engine calls and fork (see the top of this file). A call counts itself in
 * and then looks for a fork; a fork says it is waiting and then looks for calls: with both
 * sequentially consistent, at least one of them sees the other. */
static _Atomic int calls_in_flight = 0;
static _Atomic int forks_waiting = 0;   /* a count: two threads may fork at once */

static void nap_briefly(void)
{
    struct timespec ts = {0, 20000};  /* 20 us */
    nanosleep(&ts, 0);
}

static void call_begin(void)
{
    for (;;) {
        atomic_fetch_add(&calls_in_flight, 1);
        if (atomic_load(&forks_waiting) == 0) return;
        atomic_fetch_sub(&calls_in_flight, 1);  /* a fork is waiting for the calls to end */
        while (atomic_load(&forks_waiting) > 0) nap_briefly();
    }
}

static void call_end(void) { atomic_fetch_sub(&calls_in_flight, 1); }

int cgru_calls_in_flight(void) { return atomic_load(&calls_in_flight); }

int cgru_fork_serial(void) { return fork_serial; }

int cgru_fork_keeps_threads(void)
{
#if defined(CGRU_RUNTIME_SURVIVES_FORK)
    return libomp_resets_at_fork();
#elif defined(_OPENMP) && !defined(CGRU_PAUSE_BEFORE_FORK)
    return 0;  /* children of a process that used threads run serially */
#else
    return 1;
#endif
}

#if defined(__unix__) || defined(__APPLE__)
static void before_fork(void)
{
    atomic_fetch_add(&forks_waiting, 1);
    while (atomic_load(&calls_in_flight) > 0) nap_briefly();
#if defined(CGRU_PAUSE_BEFORE_FORK)
    pool_released_for_fork = omp_pause_resource_all(omp_pause_hard) == 0;
#elif defined(CGRU_RUNTIME_SURVIVES_FORK)
    /* without teams there is no pool for the child to inherit */
    pool_released_for_fork = libomp_resets_at_fork() ||
                             !atomic_load_explicit(&teams_started, memory_order_relaxed);
#elif defined(_OPENMP)
    pool_released_for_fork = 0;
#endif
}

static void in_parent(void) { atomic_fetch_sub(&forks_waiting, 1); }

static void in_child(void)
{
    if (!pool_released_for_fork) fork_serial = 1;
    /* only the forking thread exists here: no call runs, no other fork waits */
    atomic_store(&forks_waiting, 0);
    atomic_store(&calls_in_flight, 0);
    atomic_store_explicit(&threads_in_use, 0, memory_order_relaxed);
}
#endif

/* ---- once, when the library loads ------------------------------------------------------------ */

int cgru_solo_test_pass = 0;

__attribute__((constructor)) static void threads_init(void)
{
    calibrate_ticks();
    cgroup_cpus = read_cgroup_cpus();
}

/* Once the BLAS is loaded (the module's import does both): fork handlers run their prepare
 * steps in the reverse order of registration, so registering after OpenBLAS (at its load) and
 * the OpenMP runtime (at its first call, made here; LLVM's libomp registers then) puts the wait
 * for calls in flight before their own steps. Otherwise their prepare steps would run first and
 * hold their locks or stop their threads while a call in flight still needs them: libomp's
 * fork-join lock, which the call's next parallel region waits for, would hang the process. */
void cgru_install_fork_handlers(void)
{
    static atomic_flag installed = ATOMIC_FLAG_INIT;
    if (atomic_flag_test_and_set(&installed)) return;
#ifdef _OPENMP
    (void)omp_get_max_threads();
#endif
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork(before_fork, in_parent, in_child);
#endif
}

void cgru_set_solo_test(int pass) { cgru_solo_test_pass = pass > 0 ? pass : 0; }

int cgru_stall_asks_ns(int earlier_long_waits, double lost_ns, double so_far_ns)
{
    return cgru_stall_asks(earlier_long_waits, lost_ns, so_far_ns, CGRU_STALL_WINDOW_NS);
}

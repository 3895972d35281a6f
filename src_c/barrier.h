/*
 * The barrier that the threads of one parallel region pass at every time step.
 *
 * libgomp's `#pragma omp barrier` ends in a futex wake system call on every pass, whether or not a
 * thread sleeps: measured on the 2-core development VM, 0.25-0.45 us per pass against 0.03-0.16 us
 * for this one (the range is where the hypervisor places the two cores). At B = 1 a time step's
 * work is about 1 us, so the system call was a fifth of it.
 *
 * A pass: every thread adds itself to `arrived`; the last one resets it and bumps `generation`,
 * which the others spin on. The last arriver's read-modify-write acquires every other thread's
 * release, and its release store of `generation` is what the waiters acquire, so everything any
 * thread wrote before the barrier is visible to every thread after it (as with the OpenMP one).
 * A waiter spins with a pause instruction and, after CGRU_BARRIER_SPINS rounds, yields its core
 * at each round, so that a thread descheduled on a crowded machine gets to run and arrive.
 *
 * All threads of the region must call cgru_barrier_wait with the same team size, the number of
 * threads the region really has (omp_get_num_threads()).
 */
#ifndef CGRU_BARRIER_H
#define CGRU_BARRIER_H

#include <stdatomic.h>

#if defined(__unix__) || defined(__APPLE__)
#include <sched.h>
#define CGRU_YIELD() sched_yield()
#else
#define CGRU_YIELD() ((void)0)
#endif

#if defined(__x86_64__) || defined(__i386__)
#define CGRU_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CGRU_PAUSE() __asm__ __volatile__("yield")
#else
#define CGRU_PAUSE() ((void)0)
#endif

/* Pause rounds before a waiter starts yielding: tens of microseconds, far above the spread
 * between threads of a balanced time step, far below a scheduler's time slice. */
#define CGRU_BARRIER_SPINS 2048

typedef struct {
    _Alignas(64) atomic_int arrived;
    _Alignas(64) atomic_uint generation;
} cgru_barrier;

static inline void cgru_barrier_init(cgru_barrier *bar)
{
    atomic_init(&bar->arrived, 0);
    atomic_init(&bar->generation, 0u);
}

static inline void cgru_barrier_wait(cgru_barrier *bar, int team)
{
    if (team <= 1) return;
    const unsigned now = atomic_load_explicit(&bar->generation, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&bar->arrived, 1, memory_order_acq_rel) == team - 1) {
        atomic_store_explicit(&bar->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&bar->generation, now + 1u, memory_order_release);
        return;
    }
    for (int round = 0; atomic_load_explicit(&bar->generation, memory_order_acquire) == now; round++) {
        if (round < CGRU_BARRIER_SPINS) CGRU_PAUSE();
        else CGRU_YIELD();
    }
}

#endif

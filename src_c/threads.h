/*
 * How an engine call's work is cut and how many threads run it (threads.c).
 *
 * The cut (`parts`: thread slices of the hidden units, blocks of the large GEMMs) follows the
 * thread setting alone, capped by the CPUs the process may use, so that a result never depends
 * on how busy the machine was: the threads that run the call (`threads`, at most `parts`) are
 * what contention reduces, and each thread then takes several parts.
 */
#ifndef CGRU_THREADS_H
#define CGRU_THREADS_H

#include "cgru.h"

typedef struct {
    int parts;     /* how the work is cut: min(thread setting, CPUs available) */
    int threads;   /* threads that run it now: <= parts, >= 1 */
    int *stalled;  /* set to 1 by a split product whose threads finished far apart, or NULL */
    int reserved;  /* 1 when `threads` count among the CPUs calls hold (cgru_plan_begin) */
} cgru_plan;

/* Every engine call runs inside a plan: from its start to cgru_plan_end it is a call in flight,
 * which a fork waits for (threads.c). */

/* The plan of one call that asks for n_threads; end every plan with cgru_plan_end. */
cgru_plan cgru_plan_begin(int n_threads);
/* The plan of a call that runs on the calling thread alone and reserves no share of the CPUs */
cgru_plan cgru_plan_serial(void);
/* stalled: the call's team was held up by a descheduled thread (barrier.h) */
void cgru_plan_end(cgru_plan plan, int stalled);

/* Threads that run `parts` parts of a plan: min(plan.threads, parts), at least 1. */
static inline int cgru_plan_threads(cgru_plan plan, int parts)
{
    int n = plan.threads < parts ? plan.threads : parts;
    return n < 1 ? 1 : n;
}

#endif

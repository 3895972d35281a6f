/* Typed part of gates.h, included once per dtype (see real_begin.h): the gate kernels, each
 * described above its definition in gates_kernels_impl.h (compiled in gates.c). */
#include "real_begin.h"

CGRU_INTERNAL void FN(gates_forward_reset_after)(
    REAL *h_new, REAL *y, int ldy, REAL *gx, const REAL *bias, REAL *hn_keep, const REAL *gh,
    const REAL *h_prev, const REAL *b_hn, const int64_t *lengths, int t, int keep, int B, int H,
    int j0, int j1);
CGRU_INTERNAL void FN(gates_forward_rz)(
    REAL *gx, const REAL *bias, REAL *gh, REAL *rh, const REAL *h_prev, int keep, int B, int H,
    int j0, int j1);
CGRU_INTERNAL void FN(gates_forward_n)(
    REAL *h_new, REAL *y, int ldy, REAL *gx, const REAL *bias, const REAL *gh, const REAL *h_prev,
    const int64_t *lengths, int t, int keep, int B, int H, int j0, int j1);
CGRU_INTERNAL void FN(gates_backward_reset_after)(
    REAL *dh_prev, REAL *gates, REAL *extra, const REAL *dh_next, const REAL *dy, int ldy,
    const REAL *h_prev, const int64_t *lengths, int t, int B, int H, int j0, int j1);
CGRU_INTERNAL void FN(gates_backward_zn)(
    REAL *dh_prev, REAL *gates, const REAL *dh_next, const REAL *dy, int ldy, const REAL *h_prev,
    const int64_t *lengths, int t, int B, int H, int j0, int j1);
CGRU_INTERNAL void FN(gates_backward_r)(
    REAL *dh_prev, REAL *gates, const REAL *drh, const REAL *h_prev, const int64_t *lengths, int t,
    int B, int H, int j0, int j1);

#include "real_end.h"

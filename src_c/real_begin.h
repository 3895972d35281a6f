/*
 * Typed sources: a file that includes real_begin.h ... real_end.h is compiled once per dtype.
 * Define CGRU_DOUBLE to 0 (float, suffix _f32) or 1 (double, suffix _f64) before including it.
 *   REAL      the element type
 *   FN(name)  name with the dtype suffix
 *   ALIGN     elements per 64-byte cache line, the unit of thread slices and padding
 *             (CGRU_LINE_ELEMS, slices.h)
 */
#if CGRU_DOUBLE
#define REAL double
#define FN(name) name##_f64
#define ALIGN CGRU_LINE_ELEMS(sizeof(double))
#else
#define REAL float
#define FN(name) name##_f32
#define ALIGN CGRU_LINE_ELEMS(sizeof(float))
#endif

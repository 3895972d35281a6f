/* Undo real_begin.h so the next dtype can be included. */
#undef REAL
#undef FN
#undef ALIGN

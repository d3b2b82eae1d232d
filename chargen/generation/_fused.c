/* One sampling step of a stacked LSTM, whole, with int8 weights (chargen.generation.fused).

Why in C: a step of one stream is ~40 small torch operations at 1-4 us each, and the weights
(3 MB in int8 for 2x512) are read from L3 at every step because torch's products spread each
layer over the threads anew. Here each thread owns the same hidden units at every step, so its
share of the weights (1.5 MB of 3 MB on two threads) stays in its core's L2, and a layer's
product, gates and cell update run in one pass with no temporary tensors.

One build runs on every CPU: the kernels are compiled for their instruction sets by per-function
target attributes (not -march), and the best one the CPU runs is chosen here at run time
(CHARGEN_NATIVE_ISA, read by chargen.generation.fused, forces another):
  amx      AMX tiles for whole groups of 16 streams, AVX512-VNNI for the rest (Intel Xeon since
           Sapphire Rapids; _fused_avx512.c)
  avx512   AVX512-VNNI, four streams per load of weights (AMD Zen 4, Intel Xeon since Cascade Lake)
  avxvnni  AVX2 with the 256-bit VNNI instruction (Intel Core since Alder Lake; _fused_avx2.c)
  avx2     AVX2 and FMA (AMD Zen 1-3, Intel since Haswell; _fused_avx2.c)
  portable plain C the compiler vectorises (ARM NEON, anything else; _fused_portable.c)
Every path computes the same integer sums exactly, and the same floats with the same operations
in the same order, so all give the same numbers to the bit, and a stream's numbers do not depend
on the number of threads or on the other streams. The arithmetic is that of chargen's other int8
steps: h is kept as round(127 h), weights are quantised per output row.

Layouts (B streams, L layers, H hidden units, K = H for layer 0 and 2H above):
  weight  int8  (4, H/16, K/4, 16, 4): gate (nn.LSTM order i, f, g, o), block of 16 units,
                group of 4 inputs, unit, input: a 64-byte row feeds one AVX-512 VNNI instruction
                (two AVX2 ones) per stream, and 16 rows are one AMX weight tile
  offset  int32 (4H,)  128 * row sum of the int8 weight
  scale   float (4H,)  the row's quantisation scale
  bias    float (4H,)  zero for layer 0, whose bias is in `pre0`
  wide    int16 (4, H/16, K/2, 16, 2)  the same weights widened, for groups of four streams on the
                avx2 path (NULL elsewhere): one vpmaddwd makes 16 exact products, where int8 needs
                three instructions on the multiply ports for 32 (see _fused_avx2.c)
  pre0    float (B, 4H)  layer 0's input gates (embedding row times its input weights, plus bias)
  hc      float (B, L, 2, H)  h and c, updated in place
  q_in    uint8 (B, L, H)  round(127 h) + 128 before the step (read)
  q_out   uint8 (B, L, H)  the same after the step (written; the caller swaps the two)
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <omp.h>

#include "_fused.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#endif

enum { PORTABLE, AVX2, AVXVNNI, AVX512, AMX, ISAS };
static const char *const NAMES[ISAS] = {"portable", "avx2", "avxvnni", "avx512", "amx"};

#if defined(__x86_64__)
static const BlockKernel KERNELS[ISAS] = {portable_block, avx2_block, avxvnni_block, avx512_block, avx512_block};

static int cpu_has(int isa) {
    unsigned a, b, c, d;
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); /* and the OS saves ymm */
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vnni");
    switch (isa) {
    case AVX2:
        return avx2;
    case AVXVNNI: /* CPUID.(7,1):EAX bit 4 */
        return avx2 && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1);
    case AVX512:
        return avx512;
    case AMX: /* the CPU's tiles and the kernel's leave to use their state (Linux 5.16 and later) */
        return avx512 && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1) &&
               syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    default:
        return 1;
    }
}
#else
static const BlockKernel KERNELS[ISAS] = {portable_block};

static int cpu_has(int isa) { return isa == PORTABLE; }
#endif

static int runs(int isa) {
    static int known[ISAS] = {-1, -1, -1, -1, -1};
    if (isa < 0 || isa >= ISAS) return 0;
    if (known[isa] < 0) known[isa] = cpu_has(isa);
    return known[isa];
}

static void run_step(const Step *st, int threads, int isa) {
    BlockKernel block = KERNELS[isa];
    int blocks = st->H / BLOCK;
#pragma omp parallel num_threads(threads)
    {
        int n = omp_get_num_threads(), t = omp_get_thread_num();
        int first = blocks * t / n, last = blocks * (t + 1) / n; /* the same units at every step */
#if defined(__x86_64__)
        if (isa == AMX) amx_begin();
#endif
        for (int l = 0; l < st->L; l++) {
            for (int blk = first; blk < last; blk++) {
                int s = 0;
#if defined(__x86_64__)
                if (isa == AMX) s = amx_block(st, l, blk, 0);
#endif
                for (; st->B - s >= MAX_STREAMS; s += MAX_STREAMS) block(st, l, blk, s, MAX_STREAMS);
                for (; s < st->B; s++) block(st, l, blk, s, 1);
            }
#pragma omp barrier
        }
#if defined(__x86_64__)
        if (isa == AMX) amx_end();
#endif
    }
}

/* The paths this CPU runs, fastest first. */
static PyObject *py_runnable(PyObject *self, PyObject *unused) {
    PyObject *names = PyList_New(0);
    for (int isa = ISAS - 1; names && isa >= 0; isa--) {
        PyObject *name = runs(isa) ? PyUnicode_FromString(NAMES[isa]) : NULL;
        if (name && PyList_Append(names, name) < 0) Py_CLEAR(names);
        Py_XDECREF(name);
    }
    return names;
}

#define ARGS 10

/* step(layers, L, H, B, threads, isa, pre0, hc, q_in, q_out): addresses as ints; `layers`
   points at L groups of five addresses (weight, offset, scale, bias, wide or 0); `isa` indexes ISAS. */
static PyObject *py_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != ARGS) {
        PyErr_SetString(PyExc_TypeError, "step takes 10 arguments");
        return NULL;
    }
    long long v[ARGS];
    for (int i = 0; i < ARGS; i++) {
        v[i] = PyLong_AsLongLong(args[i]);
        if (v[i] == -1 && PyErr_Occurred()) return NULL;
    }
    Step st = {(const Layer *)(intptr_t)v[0],  (int)v[1], (int)v[2], (int)v[3], (const float *)(intptr_t)v[6],
               (float *)(intptr_t)v[7], (const uint8_t *)(intptr_t)v[8], (uint8_t *)(intptr_t)v[9]};
    int threads = (int)v[4], isa = (int)v[5];
    if (!runs(isa) || st.L < 1 || st.H < BLOCK || st.H % BLOCK || st.B < 1 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "fused step: unsupported instruction set or shapes");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    run_step(&st, threads, isa);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"runnable", py_runnable, METH_NOARGS, "The instruction sets of ISAS this CPU runs the step with, fastest first."},
    {"step", (PyCFunction)(void (*)(void))py_step, METH_FASTCALL, "One LSTM step for every stream, in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fused(void) {
    PyObject *m = PyModule_Create(&module), *names = PyTuple_New(ISAS);
    for (int isa = 0; names && isa < ISAS; isa++) PyTuple_SET_ITEM(names, isa, PyUnicode_FromString(NAMES[isa]));
    if (m && names && PyModule_AddObject(m, "ISAS", names) == 0) return m;
    Py_XDECREF(names);
    Py_XDECREF(m);
    return NULL;
}

/* One sampling step of a stacked LSTM, whole, with int8 weights (chargen.generation.fused).

Why in C: a step of one stream is ~40 small torch operations at 1-4 us each, and the weights
(3 MB in int8 for 2x512) are read from L3 at every step because torch's products spread each
layer over the threads anew. Here each thread owns the same hidden units at every step, so its
share of the weights (1.5 MB of 3 MB on two threads) stays in its core's L2, and a layer's
product, gates and cell update run in one pass with no temporary tensors. Streams go through AMX
tiles in whole groups of 16 where the CPU and the kernel allow them, else through VNNI four at a
time (each load of weights feeds four streams), and the rest one at a time.

The arithmetic is that of chargen's other int8 steps: h is kept as round(127 h), weights are
quantised per output row, the integer sums are exact (AVX512-VNNI: unsigned 8-bit inputs
h + 128 times signed 8-bit weights, 128 times each row's sum taken off), so a stream's numbers
do not depend on the number of threads or on the other streams.

Layouts (B streams, L layers, H hidden units, K = H for layer 0 and 2H above):
  weight  int8  (4, H/16, K/4, 16, 4): gate (nn.LSTM order i, f, g, o), block of 16 units,
                group of 4 inputs, unit, input: a 64-byte row feeds one VNNI instruction per
                stream, and 16 rows are one AMX weight tile
  offset  int32 (4H,)  128 * row sum of the int8 weight
  scale   float (4H,)  the row's quantisation scale
  bias    float (4H,)  zero for layer 0, whose bias is in `pre0`
  pre0    float (B, 4H)  layer 0's input gates (embedding row times its input weights, plus bias)
  hc      float (B, L, 2, H)  h and c, updated in place
  q_in    uint8 (B, L, H)  round(127 h) + 128 before the step (read)
  q_out   uint8 (B, L, H)  the same after the step (written; the caller swaps the two)
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

#define BLOCK 16 /* hidden units per block: one vector of int32 sums */
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni,amx-tile,amx-int8")))

typedef struct {
    const int8_t *weight;
    const int32_t *offset;
    const float *scale;
    const float *bias;
} Layer;

typedef struct {
    const Layer *layers;
    int L, H, B;
    const float *pre0;
    float *hc;
    const uint8_t *q_in;
    uint8_t *q_out;
} Step;

/* e^x to ~2e-7 relative: 2^n e^r with |r| <= ln2/2, e^r by its Taylor series to r^6. */
TARGET static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

TARGET static inline __m512 sigmoid16(__m512 x) {
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

TARGET static inline __m512 tanh16(__m512 x) { /* 2 sigmoid(2x) - 1 */
    __m512 two = _mm512_set1_ps(2.0f);
    return _mm512_fmsub_ps(two, sigmoid16(_mm512_mul_ps(two, x)), _mm512_set1_ps(1.0f));
}

/* Sums of one block's four gate rows for S streams over `groups` groups of 4 inputs: each
   64-byte load of weights feeds S instructions. S is a constant at every call, so the loops
   over streams unroll into registers (4 S sums). */
#define MAX_STREAMS 4
TARGET static inline __attribute__((always_inline)) void dot_block(const uint8_t *const x[], int S, const int8_t *w,
                                                                   int groups, size_t gate_stride,
                                                                   __m512i acc[][4]) {
    for (int k = 0; k < groups; k++) {
        __m512i xk[MAX_STREAMS];
        for (int i = 0; i < S; i++) {
            int32_t four; /* four inputs, broadcast to every unit */
            memcpy(&four, x[i] + 4 * k, 4);
            xk[i] = _mm512_set1_epi32(four);
        }
        for (int g = 0; g < 4; g++) {
            __m512i wk = _mm512_loadu_si512(w + g * gate_stride + 64 * (size_t)k);
            for (int i = 0; i < S; i++) acc[i][g] = _mm512_dpbusd_epi32(acc[i][g], xk[i], wk);
        }
    }
}

/* Gates, cell and h for units [16 blk, 16 blk + 16) of one stream, from the integer sums of
   its four gate rows. */
TARGET static void finish_block(const Layer *layer, int blk, int H, const __m512i acc[4], const float *pre, float *h,
                                float *c, uint8_t *q) {
    __m512 gate[4];
    for (int g = 0; g < 4; g++) {
        int row = g * H + blk * BLOCK;
        __m512i sum = _mm512_sub_epi32(acc[g], _mm512_loadu_si512(layer->offset + row));
        __m512 add = _mm512_loadu_ps(layer->bias + row);
        if (pre) add = _mm512_add_ps(add, _mm512_loadu_ps(pre + row));
        gate[g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_loadu_ps(layer->scale + row), add);
    }
    int unit = blk * BLOCK;
    __m512 cell = _mm512_fmadd_ps(sigmoid16(gate[1]), _mm512_loadu_ps(c + unit),
                                  _mm512_mul_ps(sigmoid16(gate[0]), tanh16(gate[2])));
    __m512 hidden = _mm512_mul_ps(sigmoid16(gate[3]), tanh16(cell));
    _mm512_storeu_ps(c + unit, cell);
    _mm512_storeu_ps(h + unit, hidden);
    __m512i level = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(hidden, _mm512_set1_ps(127.0f))),
                                     _mm512_set1_epi32(128));
    _mm_storeu_si128((__m128i *)(q + unit), _mm512_cvtepi32_epi8(level));
}

/* A layer's view of the step for one stream: where its inputs, state and output levels are. */
typedef struct {
    const uint8_t *below; /* the new levels of the layer below (NULL for layer 0) */
    const uint8_t *own;   /* this layer's levels before the step */
    const float *pre;     /* layer 0's input gates (NULL above) */
    float *h, *c;
    uint8_t *q; /* this layer's levels after the step */
} Row;

TARGET static Row row_of(const Step *st, int l, int s) {
    size_t row = (size_t)s * st->L + l;
    Row r = {l ? st->q_out + (row - 1) * st->H : NULL, st->q_in + row * st->H,
             l ? NULL : st->pre0 + (size_t)s * 4 * st->H, st->hc + row * 2 * st->H, st->hc + row * 2 * st->H + st->H,
             st->q_out + row * st->H};
    return r;
}

/* S streams from s on, one block, by VNNI instructions. */
TARGET static inline __attribute__((always_inline)) void vnni_block(const Step *st, int l, int blk, int s, int S) {
    int H = st->H, K = l ? 2 * H : H;
    size_t gate_stride = (size_t)H * K;
    const int8_t *w = st->layers[l].weight + (size_t)blk * K * BLOCK;
    Row r[MAX_STREAMS];
    const uint8_t *below[MAX_STREAMS], *own[MAX_STREAMS];
    __m512i acc[MAX_STREAMS][4];
    for (int i = 0; i < S; i++) {
        r[i] = row_of(st, l, s + i);
        below[i] = r[i].below;
        own[i] = r[i].own;
        for (int g = 0; g < 4; g++) acc[i][g] = _mm512_setzero_si512();
    }
    if (l) { /* layers above the first read [the new h below, their own old h] */
        dot_block(below, S, w, H / 4, gate_stride, acc);
        w += 16 * (size_t)H;
    }
    dot_block(own, S, w, H / 4, gate_stride, acc);
    for (int i = 0; i < S; i++) finish_block(&st->layers[l], blk, H, acc[i], r[i].pre, r[i].h, r[i].c, r[i].q);
}

/* 16 to 64 streams (whole groups of 16), one block, by AMX tiles: tiles 0-3 hold a gate's sums
   for up to four groups, tile 4 the weights of 16 input groups, tiles 5 and 6 the streams' inputs.
   The weight layout's 16 rows of 64 bytes are exactly one weight tile. */
AMX_TARGET static void amx_block(const Step *st, int l, int blk, int s0, int groups, int32_t *sums) {
    int H = st->H, K = l ? 2 * H : H, chunks = K / 64, below_chunks = l ? H / 64 : 0;
    Row r = row_of(st, l, s0);
    size_t stride = (size_t)st->L * H; /* from one stream's levels to the next's */
    const int8_t *w = st->layers[l].weight + (size_t)blk * K * BLOCK;
    for (int g = 0; g < 4; g++) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int k = 0; k < chunks; k++) {
            const uint8_t *x = k < below_chunks ? r.below + 64 * k : r.own + 64 * (k - below_chunks);
            _tile_loadd(4, w + (size_t)g * H * K + 1024 * (size_t)k, 64);
            _tile_loadd(5, x, stride);
            _tile_dpbusd(0, 5, 4);
            if (groups > 1) {
                _tile_loadd(6, x + 16 * stride, stride);
                _tile_dpbusd(1, 6, 4);
            }
            if (groups > 2) {
                _tile_loadd(5, x + 32 * stride, stride);
                _tile_dpbusd(2, 5, 4);
            }
            if (groups > 3) {
                _tile_loadd(6, x + 48 * stride, stride);
                _tile_dpbusd(3, 6, 4);
            }
        }
        int32_t *out = sums + (size_t)g * 64 * BLOCK; /* (gate, stream, unit) */
        _tile_stored(0, out, 64);
        if (groups > 1) _tile_stored(1, out + 16 * BLOCK, 64);
        if (groups > 2) _tile_stored(2, out + 32 * BLOCK, 64);
        if (groups > 3) _tile_stored(3, out + 48 * BLOCK, 64);
    }
}

/* Seven tiles of 16 rows of 64 bytes. Static data: GCC 12 drops stores to a local config as
   dead, not seeing that ldtilecfg reads them. */
static const struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16}};

AMX_TARGET static void amx_begin(void) { _tile_loadconfig(&tile_config); }

AMX_TARGET static void amx_end(void) { _tile_release(); }

TARGET static void run_step(const Step *st, int threads, int tiles) {
    int blocks = st->H / BLOCK;
#pragma omp parallel num_threads(threads)
    {
        int n = omp_get_num_threads(), t = omp_get_thread_num();
        int first = blocks * t / n, last = blocks * (t + 1) / n; /* the same units at every step */
        int32_t sums[4 * 64 * BLOCK] __attribute__((aligned(64)));
        if (tiles) amx_begin();
        for (int l = 0; l < st->L; l++) {
            for (int blk = first; blk < last; blk++) {
                int s = 0;
                while (tiles && st->B - s >= 16) {
                    int groups = (st->B - s) / 16 < 4 ? (st->B - s) / 16 : 4;
                    amx_block(st, l, blk, s, groups, sums);
                    for (int i = 0; i < 16 * groups; i++, s++) {
                        __m512i acc[4];
                        for (int g = 0; g < 4; g++) acc[g] = _mm512_load_si512(sums + ((size_t)g * 64 + i) * BLOCK);
                        Row r = row_of(st, l, s);
                        finish_block(&st->layers[l], blk, st->H, acc, r.pre, r.h, r.c, r.q);
                    }
                }
                for (; st->B - s >= MAX_STREAMS; s += MAX_STREAMS) vnni_block(st, l, blk, s, MAX_STREAMS);
                for (; s < st->B; s++) vnni_block(st, l, blk, s, 1);
            }
#pragma omp barrier
        }
        if (tiles) amx_end();
    }
}

static int usable(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vnni");
    }
    return known;
}

/* AMX needs the CPU's tiles and the kernel's leave to use their state (Linux 5.16 and later). */
static int tiles_usable(void) {
    static int known = -1;
    if (known < 0) {
        unsigned a, b, c, d;
        int tiles = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1);
        known = usable() && tiles && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    }
    return known;
}

static PyObject *py_usable(PyObject *self, PyObject *unused) { return PyBool_FromLong(usable()); }

static PyObject *py_tiles_usable(PyObject *self, PyObject *unused) { return PyBool_FromLong(tiles_usable()); }

#define ARGS 10

/* step(layers, L, H, B, threads, tiles, pre0, hc, q_in, q_out): addresses as ints; `layers`
   points at L groups of four addresses (weight, offset, scale, bias); `tiles` asks for AMX where
   it runs (else VNNI alone). */
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
    int threads = (int)v[4];
    if (!usable() || st.L < 1 || st.H < BLOCK || st.H % BLOCK || st.B < 1 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "fused step: unsupported CPU or shapes");
        return NULL;
    }
    int tiles = v[5] && st.H % 64 == 0 && tiles_usable();
    Py_BEGIN_ALLOW_THREADS;
    run_step(&st, threads, tiles);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"usable", py_usable, METH_NOARGS, "Whether this CPU has the instructions the step needs (AVX512-VNNI)."},
    {"tiles_usable", py_tiles_usable, METH_NOARGS, "Whether the step can use AMX tiles here."},
    {"step", (PyCFunction)(void (*)(void))py_step, METH_FASTCALL, "One LSTM step for every stream, in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }

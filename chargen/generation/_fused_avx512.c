/* The native step's kernels for AVX512-VNNI, and AMX tiles for whole groups of 16 streams
   (chargen/generation/_fused.c chooses them from the CPU's features).

Integer sums: unsigned 8-bit levels q = round(127 h) + 128 times signed 8-bit weights by
vpdpbusd (exact in 32 bits), less 128 times each row's sum. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "_fused.h"

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni,amx-tile,amx-int8")))

TARGET static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LOW)), _mm512_set1_ps(EXP_HIGH));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HIGH), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LOW), r);
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
TARGET static void finish_block(const Layer *layer, int blk, int H, const __m512i acc[4], const Row *r) {
    __m512 gate[4];
    for (int g = 0; g < 4; g++) {
        int row = g * H + blk * BLOCK;
        __m512i sum = _mm512_sub_epi32(acc[g], _mm512_loadu_si512(layer->offset + row));
        __m512 add = _mm512_loadu_ps(layer->bias + row);
        if (r->pre) add = _mm512_add_ps(add, _mm512_loadu_ps(r->pre + row));
        gate[g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_loadu_ps(layer->scale + row), add);
    }
    int unit = blk * BLOCK;
    __m512 cell = _mm512_fmadd_ps(sigmoid16(gate[1]), _mm512_loadu_ps(r->c + unit),
                                  _mm512_mul_ps(sigmoid16(gate[0]), tanh16(gate[2])));
    __m512 hidden = _mm512_mul_ps(sigmoid16(gate[3]), tanh16(cell));
    _mm512_storeu_ps(r->c + unit, cell);
    _mm512_storeu_ps(r->h + unit, hidden);
    __m512i level = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(hidden, _mm512_set1_ps(127.0f))),
                                     _mm512_set1_epi32(128));
    _mm_storeu_si128((__m128i *)(r->q + unit), _mm512_cvtepi32_epi8(level));
}

TARGET static inline __attribute__((always_inline)) void streams_block(const Step *st, int l, int blk, int s, int S) {
    int H = st->H, K = l ? 2 * H : H;
    size_t gate_stride = (size_t)H * K;
    const int8_t *w = st->layers[l].weight + (size_t)blk * K * BLOCK;
    Streams x;
    __m512i acc[MAX_STREAMS][4];
    streams_of(st, l, s, S, &x);
    for (int i = 0; i < S; i++)
        for (int g = 0; g < 4; g++) acc[i][g] = _mm512_setzero_si512();
    if (l) { /* layers above the first read [the new h below, their own old h] */
        dot_block(x.below, S, w, H / 4, gate_stride, acc);
        w += 16 * (size_t)H;
    }
    dot_block(x.own, S, w, H / 4, gate_stride, acc);
    for (int i = 0; i < S; i++) finish_block(&st->layers[l], blk, H, acc[i], &x.r[i]);
}

TARGET void avx512_block(const Step *st, int l, int blk, int s, int S) {
    if (S == MAX_STREAMS)
        streams_block(st, l, blk, s, MAX_STREAMS);
    else
        streams_block(st, l, blk, s, 1);
}

/* 16 to 64 streams (whole groups of 16), one block, by AMX tiles: tiles 0-3 hold a gate's sums
   for up to four groups, tile 4 the weights of 16 input groups, tiles 5 and 6 the streams' inputs.
   The weight layout's 16 rows of 64 bytes are exactly one weight tile. */
AMX_TARGET static void amx_sums(const Step *st, int l, int blk, int s0, int groups, int32_t *sums) {
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

AMX_TARGET int amx_block(const Step *st, int l, int blk, int s) {
    int32_t sums[4 * 64 * BLOCK] __attribute__((aligned(64)));
    int first = s;
    if (st->H % 64) return 0; /* tiles take the inputs 64 at a time */
    while (st->B - s >= 16) {
        int groups = (st->B - s) / 16 < 4 ? (st->B - s) / 16 : 4;
        amx_sums(st, l, blk, s, groups, sums);
        for (int i = 0; i < 16 * groups; i++, s++) {
            __m512i acc[4];
            for (int g = 0; g < 4; g++) acc[g] = _mm512_load_si512(sums + ((size_t)g * 64 + i) * BLOCK);
            Row r = row_of(st, l, s);
            finish_block(&st->layers[l], blk, st->H, acc, &r);
        }
    }
    return s - first;
}

/* Seven tiles of 16 rows of 64 bytes. Static data: GCC 12 drops stores to a local config as
   dead, not seeing that ldtilecfg reads them. */
static const struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16}};

AMX_TARGET void amx_begin(void) { _tile_loadconfig(&tile_config); }

AMX_TARGET void amx_end(void) { _tile_release(); }
#endif

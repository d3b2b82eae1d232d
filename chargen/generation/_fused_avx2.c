/* The native step's kernels for AVX2 with FMA, and for AVX-VNNI where the CPU has it (Intel
   Core since Alder Lake): every x86-64 CPU of the last decade without AVX-512 (chosen by
   chargen/generation/_fused.c from the CPU's features).

Integer sums, exact: with AVX2 alone, 8-bit products go through vpmaddubsw, whose pairs of
products are added with signed 16-bit saturation. The levels are made signed, x = q - 128 =
round(127 h) in [-127, 127], and each product w x is taken as |w| times x with w's sign
(vpsignb): a pair is at most 2 * 127 * 127 = 32258 < 32767, so nothing saturates, and vpmaddwd
adds the pairs into 32-bit sums. No row correction is needed then. With AVX-VNNI, vpdpbusd
takes the unsigned levels q directly and 128 times each row's sum is taken off, as on AVX-512.

Groups of four streams on AVX2 read the weights widened to int16 (Layer.wide) when the caller
made them: vpmaddwd of int16 weights and inputs is 16 exact products with 32-bit sums per
multiply-port instruction and one add, where the int8 form needs vpsignb, vpmaddubsw and
vpmaddwd, all three on the multiply ports on AMD Zen 4 (measured: 22.5 against 19.5 products
per cycle in L1; the int8 form is kept for one stream, whose step is bound by reading the
weights). The sums are the same integers, so the numbers are the same to the bit. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "_fused.h"

#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

AVX2 INLINE __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LOW)), _mm256_set1_ps(EXP_HIGH));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HIGH), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LOW), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n)); /* p 2^n, rounded once, as vscalefps does */
}

AVX2 INLINE __m256 sigmoid8(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

AVX2 INLINE __m256 tanh8(__m256 x) { /* 2 sigmoid(2x) - 1 */
    __m256 two = _mm256_set1_ps(2.0f);
    return _mm256_fmsub_ps(two, sigmoid8(_mm256_mul_ps(two, x)), _mm256_set1_ps(1.0f));
}

/* One gate's sums over `groups` groups of 4 inputs for S streams, the block's 16 units in two
   halves of 8 (acc[stream][half]): each 32-byte load of weights feeds S streams. */
AVX2 INLINE void gate_sums(const uint8_t *const x[], int S, const int8_t *w, int groups, int vnni,
                           __m256i acc[][2]) {
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (int k = 0; k < groups; k++) {
        __m256i xk[MAX_STREAMS];
        for (int i = 0; i < S; i++) {
            int32_t four; /* four inputs, broadcast to every unit */
            memcpy(&four, x[i] + 4 * k, 4);
            xk[i] = _mm256_set1_epi32(four);
            if (!vnni) xk[i] = _mm256_xor_si256(xk[i], flip); /* q - 128, signed */
        }
        for (int half = 0; half < 2; half++) {
            __m256i wk = _mm256_loadu_si256((const __m256i *)(w + 64 * (size_t)k + 32 * half));
            if (vnni) { /* the VEX form (AVX-VNNI) in assembly: no AVX-512 target needed */
                for (int i = 0; i < S; i++) __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc[i][half]) : "x"(xk[i]), "x"(wk));
            } else {
                __m256i magnitude = _mm256_abs_epi8(wk);
                for (int i = 0; i < S; i++) {
                    __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(xk[i], wk));
                    acc[i][half] = _mm256_add_epi32(acc[i][half], _mm256_madd_epi16(pairs, ones));
                }
            }
        }
    }
}

/* Gates, cell and h for 8 units from `unit` on of one stream, from the sums of their four gate
   rows (sums[gate][0..8)); `correct` takes off the unsigned inputs' offset. */
AVX2 INLINE void finish8(const Layer *layer, int H, int unit, const int32_t (*sums)[BLOCK], int at, int correct,
                         const Row *r) {
    __m256 gate[4];
    for (int g = 0; g < 4; g++) {
        int row = g * H + unit;
        __m256i sum = _mm256_loadu_si256((const __m256i *)(sums[g] + at));
        if (correct) sum = _mm256_sub_epi32(sum, _mm256_loadu_si256((const __m256i *)(layer->offset + row)));
        __m256 add = _mm256_loadu_ps(layer->bias + row);
        if (r->pre) add = _mm256_add_ps(add, _mm256_loadu_ps(r->pre + row));
        gate[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_loadu_ps(layer->scale + row), add);
    }
    __m256 cell = _mm256_fmadd_ps(sigmoid8(gate[1]), _mm256_loadu_ps(r->c + unit),
                                  _mm256_mul_ps(sigmoid8(gate[0]), tanh8(gate[2])));
    __m256 hidden = _mm256_mul_ps(sigmoid8(gate[3]), tanh8(cell));
    _mm256_storeu_ps(r->c + unit, cell);
    _mm256_storeu_ps(r->h + unit, hidden);
    __m256i level = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(hidden, _mm256_set1_ps(127.0f))),
                                     _mm256_set1_epi32(128)); /* in [1, 255] */
    __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(level), _mm256_extracti128_si256(level, 1));
    _mm_storel_epi64((__m128i *)(r->q + unit), _mm_packus_epi16(words, words));
}

AVX2 INLINE void streams_block(const Step *st, int l, int blk, int s, int S, int vnni) {
    int H = st->H, K = l ? 2 * H : H;
    const int8_t *w = st->layers[l].weight + (size_t)blk * K * BLOCK;
    Streams x;
    int32_t sums[MAX_STREAMS][4][BLOCK];
    streams_of(st, l, s, S, &x);
    for (int g = 0; g < 4; g++) { /* a gate at a time: 2 S sums fit the 16 registers */
        __m256i acc[MAX_STREAMS][2];
        const int8_t *wg = w + (size_t)g * H * K;
        for (int i = 0; i < S; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
        if (l) { /* layers above the first read [the new h below, their own old h] */
            gate_sums(x.below, S, wg, H / 4, vnni, acc);
            wg += 16 * (size_t)H;
        }
        gate_sums(x.own, S, wg, H / 4, vnni, acc);
        for (int i = 0; i < S; i++) {
            _mm256_storeu_si256((__m256i *)sums[i][g], acc[i][0]);
            _mm256_storeu_si256((__m256i *)(sums[i][g] + 8), acc[i][1]);
        }
    }
    for (int i = 0; i < S; i++)
        for (int at = 0; at < BLOCK; at += 8) finish8(&st->layers[l], H, blk * BLOCK + at, sums[i], at, vnni, &x.r[i]);
}

/* One gate's sums for MAX_STREAMS streams over `pairs` pairs of int16 inputs: per pair, the
   block's 16 units in two halves of 8 (acc[stream][half]), each 32-byte load of weights feeding
   every stream. */
AVX2 INLINE void wide_gate_sums(const int16_t *const x[], const int16_t *w, int pairs, __m256i acc[][2]) {
    for (int j = 0; j < pairs; j++) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + 32 * (size_t)j));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + 32 * (size_t)j + 16));
        for (int i = 0; i < MAX_STREAMS; i++) {
            int32_t two; /* two inputs, broadcast to every unit */
            memcpy(&two, x[i] + 2 * j, 4);
            __m256i xj = _mm256_set1_epi32(two);
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(w0, xj));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(w1, xj));
        }
    }
}

/* n levels q -> the signed inputs q - 128 as int16. */
AVX2 INLINE void widen_levels(const uint8_t *q, int n, int16_t *out) {
    for (int u = 0; u < n; u += 16) {
        __m256i words = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(q + u)));
        _mm256_storeu_si256((__m256i *)(out + u), _mm256_sub_epi16(words, _mm256_set1_epi16(128)));
    }
}

AVX2 static void wide_block(const Step *st, int l, int blk, int s) {
    int H = st->H, K = l ? 2 * H : H;
    const Layer *layer = &st->layers[l];
    const int16_t *w = layer->wide + (size_t)blk * K * BLOCK;
    Streams x;
    int16_t inputs[MAX_STREAMS][K]; /* [the new levels below, its own] as int16, as the weights' K */
    const int16_t *rows[MAX_STREAMS];
    int32_t sums[MAX_STREAMS][4][BLOCK];
    streams_of(st, l, s, MAX_STREAMS, &x);
    for (int i = 0; i < MAX_STREAMS; i++) {
        if (l) widen_levels(x.below[i], H, inputs[i]);
        widen_levels(x.own[i], H, inputs[i] + K - H);
        rows[i] = inputs[i];
    }
    for (int g = 0; g < 4; g++) {
        __m256i acc[MAX_STREAMS][2];
        for (int i = 0; i < MAX_STREAMS; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
        wide_gate_sums(rows, w + (size_t)g * H * K, K / 2, acc);
        for (int i = 0; i < MAX_STREAMS; i++) {
            _mm256_storeu_si256((__m256i *)sums[i][g], acc[i][0]);
            _mm256_storeu_si256((__m256i *)(sums[i][g] + 8), acc[i][1]);
        }
    }
    for (int i = 0; i < MAX_STREAMS; i++)
        for (int at = 0; at < BLOCK; at += 8) finish8(layer, H, blk * BLOCK + at, sums[i], at, 0, &x.r[i]);
}

AVX2 void avx2_block(const Step *st, int l, int blk, int s, int S) {
    if (S == MAX_STREAMS && st->layers[l].wide)
        wide_block(st, l, blk, s);
    else if (S == MAX_STREAMS)
        streams_block(st, l, blk, s, MAX_STREAMS, 0);
    else
        streams_block(st, l, blk, s, 1, 0);
}

AVX2 void avxvnni_block(const Step *st, int l, int blk, int s, int S) {
    if (S == MAX_STREAMS)
        streams_block(st, l, blk, s, MAX_STREAMS, 1);
    else
        streams_block(st, l, blk, s, 1, 1);
}
#endif

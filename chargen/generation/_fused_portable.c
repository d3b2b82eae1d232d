/* The native step in plain C, for every CPU (ARM NEON, x86-64 without AVX2, ...): loops the
   compiler vectorises, with the same operations in the same order as the x86 kernels, so its
   numbers are theirs to the bit (the extension is built with -ffp-contract=off: no fused
   multiply-add but the explicit fmaf calls). Integer sums: unsigned levels q = round(127 h) + 128
   times signed weights in 32 bits, less 128 times each row's sum. */
#include <math.h>
#include <string.h>

#include "_fused.h"

static inline float exp1(float x) {
    x = x > EXP_LOW ? x : EXP_LOW;
    x = x < EXP_HIGH ? x : EXP_HIGH;
    float n = rintf(x * LOG2E);
    float r = fmaf(-n, LN2_HIGH, x);
    r = fmaf(-n, LN2_LOW, r);
    float p = 1.0f / 720;
    p = fmaf(p, r, 1.0f / 120);
    p = fmaf(p, r, 1.0f / 24);
    p = fmaf(p, r, 1.0f / 6);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    int32_t bits = ((int32_t)n + 127) << 23; /* 2^n, n in [-126, 127] */
    float two_n;
    memcpy(&two_n, &bits, 4);
    return p * two_n;
}

static inline float sigmoid1(float x) { return 1.0f / (1.0f + exp1(0.0f - x)); }

static inline float tanh1(float x) { return fmaf(2.0f, sigmoid1(2.0f * x), -1.0f); } /* 2 sigmoid(2x) - 1 */

/* One gate's sums over `groups` groups of 4 inputs for S streams (acc[stream][unit]). */
static inline void gate_sums(const uint8_t *const x[], int S, const int8_t *w, int groups, int32_t acc[][BLOCK]) {
    for (int k = 0; k < groups; k++) {
        const int8_t *wk = w + 64 * (size_t)k; /* (unit, input) */
        for (int i = 0; i < S; i++) {
            const uint8_t *xk = x[i] + 4 * k;
            for (int u = 0; u < BLOCK; u++)
                acc[i][u] += wk[4 * u] * xk[0] + wk[4 * u + 1] * xk[1] + wk[4 * u + 2] * xk[2] + wk[4 * u + 3] * xk[3];
        }
    }
}

static void finish_block(const Layer *layer, int H, int blk, const int32_t (*sums)[BLOCK], const Row *r) {
    for (int u = 0; u < BLOCK; u++) {
        int unit = blk * BLOCK + u;
        float gate[4];
        for (int g = 0; g < 4; g++) {
            int row = g * H + unit;
            float add = r->pre ? layer->bias[row] + r->pre[row] : layer->bias[row];
            gate[g] = fmaf((float)(sums[g][u] - layer->offset[row]), layer->scale[row], add);
        }
        float cell = fmaf(sigmoid1(gate[1]), r->c[unit], sigmoid1(gate[0]) * tanh1(gate[2]));
        float hidden = sigmoid1(gate[3]) * tanh1(cell);
        r->c[unit] = cell;
        r->h[unit] = hidden;
        r->q[unit] = (uint8_t)((int32_t)rintf(hidden * 127.0f) + 128);
    }
}

static inline void streams_block(const Step *st, int l, int blk, int s, int S) {
    int H = st->H, K = l ? 2 * H : H;
    const int8_t *w = st->layers[l].weight + (size_t)blk * K * BLOCK;
    Streams x;
    int32_t sums[MAX_STREAMS][4][BLOCK];
    streams_of(st, l, s, S, &x);
    for (int g = 0; g < 4; g++) {
        int32_t acc[MAX_STREAMS][BLOCK] = {{0}};
        const int8_t *wg = w + (size_t)g * H * K;
        if (l) { /* layers above the first read [the new h below, their own old h] */
            gate_sums(x.below, S, wg, H / 4, acc);
            wg += 16 * (size_t)H;
        }
        gate_sums(x.own, S, wg, H / 4, acc);
        for (int i = 0; i < S; i++) memcpy(sums[i][g], acc[i], sizeof acc[i]);
    }
    for (int i = 0; i < S; i++) finish_block(&st->layers[l], H, blk, sums[i], &x.r[i]);
}

void portable_block(const Step *st, int l, int blk, int s, int S) {
    if (S == MAX_STREAMS)
        streams_block(st, l, blk, s, MAX_STREAMS);
    else
        streams_block(st, l, blk, s, 1);
}

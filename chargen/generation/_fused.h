/* What the native step's files share (chargen/generation/_fused.c and its kernels): the step's
   description, a stream's view of it, and the kernels each instruction set provides. */
#ifndef CHARGEN_FUSED_H
#define CHARGEN_FUSED_H

#include <stddef.h>
#include <stdint.h>

#define BLOCK 16      /* hidden units per block: the weight layout's rows */
#define MAX_STREAMS 4 /* streams that share each load of weights */

/* e^x = 2^n e^r with |r| <= ln2/2 and e^r by its Taylor series to r^6 (~2e-7 relative). Every
   path computes it with the same operations in the same order, so all give the same floats. */
#define EXP_LOW -87.0f
#define EXP_HIGH 88.0f
#define LOG2E 1.44269504f
#define LN2_HIGH 0.693145752f
#define LN2_LOW 1.42860677e-6f

typedef struct {
    const int8_t *weight;
    const int32_t *offset; /* 128 * the row's sum: the correction for unsigned inputs q = round(127 h) + 128 */
    const float *scale;
    const float *bias;
    const int16_t *wide; /* the weights as int16, (4, H/16, K/2, 16, 2), for many streams on AVX2; or NULL */
} Layer;

typedef struct {
    const Layer *layers;
    int L, H, B;
    const float *pre0;
    float *hc;
    const uint8_t *q_in;
    uint8_t *q_out;
} Step;

/* A layer's view of the step for one stream: where its inputs, state and output levels are. */
typedef struct {
    const uint8_t *below; /* the new levels of the layer below (NULL for layer 0) */
    const uint8_t *own;   /* this layer's levels before the step */
    const float *pre;     /* layer 0's input gates (NULL above) */
    float *h, *c;
    uint8_t *q; /* this layer's levels after the step */
} Row;

static inline Row row_of(const Step *st, int l, int s) {
    size_t row = (size_t)s * st->L + l;
    Row r = {l ? st->q_out + (row - 1) * st->H : NULL, st->q_in + row * st->H,
             l ? NULL : st->pre0 + (size_t)s * 4 * st->H, st->hc + row * 2 * st->H, st->hc + row * 2 * st->H + st->H,
             st->q_out + row * st->H};
    return r;
}

/* S streams from s on: their rows, and the inputs of layer l for each (the levels below, its own). */
typedef struct {
    Row r[MAX_STREAMS];
    const uint8_t *below[MAX_STREAMS], *own[MAX_STREAMS];
} Streams;

static inline void streams_of(const Step *st, int l, int s, int S, Streams *out) {
    for (int i = 0; i < S; i++) {
        out->r[i] = row_of(st, l, s + i);
        out->below[i] = out->r[i].below;
        out->own[i] = out->r[i].own;
    }
}

/* Units [16 blk, 16 blk + 16) of layer l for S streams from s on (S = 1 or MAX_STREAMS): the
   integer sums of their four gate rows, then gates, cell and h. */
typedef void (*BlockKernel)(const Step *st, int l, int blk, int s, int S);

void portable_block(const Step *st, int l, int blk, int s, int S);

#if defined(__x86_64__)
void avx2_block(const Step *st, int l, int blk, int s, int S);
void avxvnni_block(const Step *st, int l, int blk, int s, int S);
void avx512_block(const Step *st, int l, int blk, int s, int S);
/* AMX: the streams from s on in whole groups of 16 (up to 64); returns how many it stepped. */
int amx_block(const Step *st, int l, int blk, int s);
void amx_begin(void);
void amx_end(void);
#endif

#endif

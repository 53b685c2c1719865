/* Softmax cross-entropy over a vocabulary, in place on bf16 logits stored transposed ([V, ld]: one column
 * per predicted token), for bertforge.objectives.base (see the Python side for why the layout is
 * transposed and why this is hand-written). Compiled on first use by bertforge.native with the machine's C
 * compiler and -march=native: AVX-512 (with its bf16 conversions) where the CPU has it, else portable C
 * that the compiler vectorizes for whatever the CPU has.
 *
 * For each column c in [c0, c1) with target t = targets[c] (c < n; columns from n on are padding):
 *   x[v]      = L[v, c] + bias[v]                   (float32)
 *   loss[c]   = logsumexp(x) - x[t]                 (computed in log space: exact when p[t] underflows)
 *   top[c]    = max(x), tlogit[c] = x[t]
 *   L[v, c]   = softmax(x)[v] - (v == t)            (the gradient of loss[c] with respect to x, as bf16)
 *   colsum[v] += softmax(x)[v] - (v == t)           (summed over this call's columns: the bias gradient)
 * Padding columns get L = 0 and add nothing. Each call works on its own columns, so callers run calls on
 * disjoint column ranges in parallel, each with its own colsum.
 * With uniform (n numbers in [0, 1)) not NULL, also one draw per column from softmax(x) by inverting its
 * CDF (ELECTRA's generator): samples[c] = the first v whose cumulative probability exceeds uniform[c]
 * (V - 1 if float rounding leaves the total just below it), accumulated in the pass that writes softmax.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as torch's casts; no NaN here */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Per-column results once the row maximum m and the sum s of exp(x - m) are known; inv[j] = 1 / s, or 0
 * for padding columns (so that their probabilities, and hence their gradients, come out 0). */
static void finish_columns(const uint16_t *L, int64_t ld, int64_t c0, int64_t w, int64_t n, const float *bias,
                           const int64_t *targets, const float *m, const float *s, float *inv, float *loss,
                           float *top, float *tlogit) {
    for (int64_t j = 0; j < w; j++) {
        int64_t c = c0 + j;
        if (c < n) {
            int64_t t = targets[c];
            float xt = bf16_to_float(L[t * ld + c]) + (bias ? bias[t] : 0.0f);
            inv[j] = 1.0f / s[j];
            loss[c] = logf(s[j]) + m[j] - xt;
            top[c] = m[j];
            tlogit[c] = xt;
        } else {
            inv[j] = 0.0f;
        }
    }
}

/* The target entries: softmax - 1 (written after the pass that wrote softmax everywhere). */
static void subtract_targets(uint16_t *L, int64_t ld, int64_t c0, int64_t w, int64_t n, const int64_t *targets,
                             const float *m, const float *inv, const float *tlogit, float *colsum) {
    for (int64_t j = 0; j < w && c0 + j < n; j++) {
        int64_t c = c0 + j, t = targets[c];
        L[t * ld + c] = float_to_bf16(expf(tlogit[c] - m[j]) * inv[j] - 1.0f);
        colsum[t] -= 1.0f;
    }
}

/* Per-column state of the draws: the uniform number (2 for padding columns: never reached), the
 * cumulative probability so far, and the draw (V until the cumulative probability exceeds the number). */
static void start_draws(int64_t V, int64_t c0, int64_t w, int64_t n, const float *uniform, float *u, float *cum,
                        int32_t *draw) {
    for (int64_t j = 0; j < w; j++) {
        u[j] = c0 + j < n ? uniform[c0 + j] : 2.0f;
        cum[j] = 0.0f;
        draw[j] = (int32_t)V;
    }
}

static void end_draws(int64_t V, int64_t c0, int64_t w, int64_t n, const int32_t *draw, int64_t *samples) {
    for (int64_t j = 0; j < w && c0 + j < n; j++) samples[c0 + j] = draw[j] < V ? draw[j] : V - 1;
}

/* Rows per chunk of the first pass: the chunk's columns are read from memory once, for their maximum,
 * then again from the L1 cache for the sum of exponentials against that maximum (the running sum is
 * rescaled when the maximum grows: the one-pass "online" softmax). 8 measured fastest of 8 / 32 / 128. */
#define CHUNK_ROWS 8

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>

int bertforge_vocab_loss_flavour(void) { return 512; }

static inline __m512 load16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline void store16(uint16_t *p, __m512 x) { _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(x)); }

/* exp(x) = 2^k * 2^f with k = round(x log2 e), |f| <= 1/2: 2^f by its degree-7 Taylor polynomial (relative
 * error < 2e-8 on that interval, below float32's rounding), 2^k by vscalefps, which also makes very
 * negative x come out 0 instead of wrapping the exponent. */
static inline __m512 exp16(__m512 x) {
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    __m512 k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, k);
    __m512 p = _mm512_set1_ps(1.5252733804059840e-5f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381606e-4f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

/* c0, c1 and ld are multiples of 16 here (the caller pads the columns to a multiple of 32). */
int bertforge_vocab_loss(uint16_t *L, int64_t V, int64_t ld, int64_t c0, int64_t c1, int64_t n, const float *bias,
                         const int64_t *targets, float *loss, float *top, float *tlogit, float *colsum,
                         const float *uniform, int64_t *samples) {
    int64_t w = c1 - c0;
    if (w <= 0) return 0;
    if ((w | c0 | ld) % 16) return -1;
    float *m = aligned_alloc(64, sizeof(float) * (size_t)w * (uniform ? 6 : 3));
    if (!m) return -2;
    float *s = m + w, *inv = s + w, *u = inv + w, *cum = u + w;
    int32_t *draw = (int32_t *)(cum + w);
    if (uniform) start_draws(V, c0, w, n, uniform, u, cum, draw);
    for (int64_t j = 0; j < w; j++) {
        m[j] = -1e30f; /* not -inf: exp16(-inf - x) would be NaN (inf - inf inside), exp16(-1e30 - x) is 0 */
        s[j] = 0.0f;
    }
    for (int64_t v0 = 0; v0 < V; v0 += CHUNK_ROWS) {
        int64_t v1 = v0 + CHUNK_ROWS < V ? v0 + CHUNK_ROWS : V;
        for (int64_t j = 0; j < w; j += 16) {
            __m512 old = _mm512_load_ps(m + j), mx = old;
            for (int64_t v = v0; v < v1; v++)
                mx = _mm512_max_ps(mx, _mm512_add_ps(load16(L + v * ld + c0 + j), _mm512_set1_ps(bias ? bias[v] : 0.0f)));
            __m512 acc = _mm512_mul_ps(_mm512_load_ps(s + j), exp16(_mm512_sub_ps(old, mx)));
            for (int64_t v = v0; v < v1; v++) {
                __m512 x = _mm512_add_ps(load16(L + v * ld + c0 + j), _mm512_set1_ps(bias ? bias[v] : 0.0f));
                acc = _mm512_add_ps(acc, exp16(_mm512_sub_ps(x, mx)));
            }
            _mm512_store_ps(s + j, acc);
            _mm512_store_ps(m + j, mx);
        }
    }
    finish_columns(L, ld, c0, w, n, bias, targets, m, s, inv, loss, top, tlogit);
    for (int64_t v = 0; v < V; v++) {
        uint16_t *row = L + v * ld + c0;
        __m512 b = _mm512_set1_ps(bias ? bias[v] : 0.0f), acc = _mm512_setzero_ps();
        for (int64_t j = 0; j < w; j += 16) {
            __m512 x = _mm512_add_ps(load16(row + j), b);
            __m512 p = _mm512_mul_ps(exp16(_mm512_sub_ps(x, _mm512_load_ps(m + j))), _mm512_load_ps(inv + j));
            store16(row + j, p);
            acc = _mm512_add_ps(acc, p);
            if (uniform) {
                __m512 c = _mm512_add_ps(_mm512_load_ps(cum + j), p);
                __m512i d = _mm512_load_si512(draw + j);
                __mmask16 first = _mm512_cmp_ps_mask(c, _mm512_load_ps(u + j), _CMP_GT_OQ) &
                                  _mm512_cmpeq_epi32_mask(d, _mm512_set1_epi32((int32_t)V));
                _mm512_store_ps(cum + j, c);
                _mm512_store_si512(draw + j, _mm512_mask_mov_epi32(d, first, _mm512_set1_epi32((int32_t)v)));
            }
        }
        colsum[v] += _mm512_reduce_add_ps(acc);
    }
    subtract_targets(L, ld, c0, w, n, targets, m, inv, tlogit, colsum);
    if (uniform) end_draws(V, c0, w, n, draw, samples);
    free(m);
    return 0;
}

#else /* portable C; the loops are written so that gcc and clang vectorize them at -O3 */

int bertforge_vocab_loss_flavour(void) { return 0; }

/* exp(x) for x <= 0 (as here: x - max): Cephes' expf polynomial, branch-free so that it vectorizes. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x; /* exp(-87) ~ 1.6e-38: still a normal float, and nothing here needs less */
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;                /* x - k ln 2, in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &e, 4);
    return p * scale;
}

int bertforge_vocab_loss(uint16_t *L, int64_t V, int64_t ld, int64_t c0, int64_t c1, int64_t n, const float *bias,
                         const int64_t *targets, float *loss, float *top, float *tlogit, float *colsum,
                         const float *uniform, int64_t *samples) {
    int64_t w = c1 - c0;
    if (w <= 0) return 0;
    float *m = malloc(sizeof(float) * (size_t)w * (uniform ? 7 : 4));
    if (!m) return -2;
    float *s = m + w, *mx = s + w, *inv = mx + w, *u = inv + w, *cum = u + w;
    int32_t *draw = (int32_t *)(cum + w);
    if (uniform) start_draws(V, c0, w, n, uniform, u, cum, draw);
    for (int64_t j = 0; j < w; j++) {
        m[j] = -1e30f; /* as in the AVX-512 flavour: exp_nonpositive(-1e30 - x) * 0 is 0, no special case */
        s[j] = 0.0f;
    }
    for (int64_t v0 = 0; v0 < V; v0 += CHUNK_ROWS) {
        int64_t v1 = v0 + CHUNK_ROWS < V ? v0 + CHUNK_ROWS : V;
        for (int64_t j = 0; j < w; j++) mx[j] = m[j];
        for (int64_t v = v0; v < v1; v++) {
            const uint16_t *row = L + v * ld + c0;
            float b = bias ? bias[v] : 0.0f;
            for (int64_t j = 0; j < w; j++) {
                float x = bf16_to_float(row[j]) + b;
                mx[j] = x > mx[j] ? x : mx[j];
            }
        }
        for (int64_t j = 0; j < w; j++) {
            s[j] *= exp_nonpositive(m[j] - mx[j]);
            m[j] = mx[j];
        }
        for (int64_t v = v0; v < v1; v++) {
            const uint16_t *row = L + v * ld + c0;
            float b = bias ? bias[v] : 0.0f;
            for (int64_t j = 0; j < w; j++) s[j] += exp_nonpositive(bf16_to_float(row[j]) + b - m[j]);
        }
    }
    finish_columns(L, ld, c0, w, n, bias, targets, m, s, inv, loss, top, tlogit);
    for (int64_t v = 0; v < V; v++) {
        uint16_t *row = L + v * ld + c0;
        float b = bias ? bias[v] : 0.0f, acc = 0.0f;
#pragma omp simd reduction(+ : acc) /* with -fopenmp-simd: lets the compiler vectorize the sum */
        for (int64_t j = 0; j < w; j++) {
            float p = exp_nonpositive(bf16_to_float(row[j]) + b - m[j]) * inv[j];
            row[j] = float_to_bf16(p);
            acc += p;
            if (uniform) {
                float c = cum[j] + p;
                cum[j] = c;
                draw[j] = c > u[j] && draw[j] == (int32_t)V ? (int32_t)v : draw[j];
            }
        }
        colsum[v] += acc;
    }
    subtract_targets(L, ld, c0, w, n, targets, m, inv, tlogit, colsum);
    if (uniform) end_draws(V, c0, w, n, draw, samples);
    free(m);
    return 0;
}
#endif

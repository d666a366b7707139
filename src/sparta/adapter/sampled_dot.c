/* The delta gradient of one SpaRTA layer on CPU: for each selected position e = (i, col[e]) of a CSR pattern,
 *     out[e] += sum_n A[n, i] * B[n, col[e]]
 * over tokens n in [n_begin, n_end), with A (N, R) and B (N, C) read in place, row-major (row strides lda, ldb).
 *
 * Tokens are taken TILE at a time: the tile's rows of A and B are transposed into two small buffers (R x TILE and
 * C x TILE, zero-padded), which stay in L2, and every selected position becomes one dot product of TILE
 * contiguous values. This fuses the transposed copies that torch.sparse.sampled_addmm needs into the kernel and
 * keeps its random accesses to B in cache. Sums are fp32. bf16 operands stay bf16 in the tiles where the CPU has
 * AVX512-BF16 (vdpbf16ps: a bf16 x bf16 product is exact in fp32, each is added in fp32 with round-to-nearest,
 * subnormals flush to zero), which halves the bytes every dot product reads; elsewhere they are widened to fp32
 * while tiling. Built by sparta.adapter.native (cc -O3 -march=native -fopenmp); with OpenMP, threads take bands
 * of rows. */
#include <stdint.h>
#include <string.h>

#define TILE 128

static inline float widen_bf16(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#if defined(__AVX2__)
#include <immintrin.h>

/* eight rows of 8 32-bit units -> their transpose, stored as 8 rows of dst (row stride `stride` units) */
static inline void store_transposed8(__m256 r[8], float *dst, int64_t stride) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + i * stride, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * stride, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
    }
}

static inline __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load8_bf16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
#define VECTOR_BLOCKS(type, load8)                                                                    \
    for (; t + 8 <= count; t += 8)                                                                    \
        for (k = 0; k + 8 <= K; k += 8) {                                                             \
            __m256 r[8];                                                                              \
            for (int i = 0; i < 8; i++) r[i] = load8(src + (n0 + t + i) * ld + k);                   \
            store_transposed8(r, dst + k * TILE + t, TILE);                                                 \
        }
#else
#define VECTOR_BLOCKS(type, load8)
#endif

/* dst[k * TILE + t] = src[(n0 + t) * ld + k] for t < count, 0 for count <= t < TILE: 8 x 8 blocks in AVX2
 * registers where the machine has it, scalar for the remainder (and everywhere else). */
#define DEFINE_TILE(name, type, load, load8)                                                             \
    static void name(const type *src, int64_t ld, int64_t n0, int count, int64_t K, float *restrict dst) { \
        int t = 0;                                                                                     \
        int64_t k = 0;                                                                                 \
        VECTOR_BLOCKS(type, load8)                                                                     \
        int64_t k_done = t > 0 ? (K / 8) * 8 : 0; /* columns the vector blocks covered for t' < t */   \
        for (int tt = 0; tt < t; tt++)                                                                 \
            for (int64_t kk = k_done; kk < K; kk++) dst[kk * TILE + tt] = load(src[(n0 + tt) * ld + kk]); \
        for (; t < count; t++)                                                                         \
            for (int64_t kk = 0; kk < K; kk++) dst[kk * TILE + t] = load(src[(n0 + t) * ld + kk]);     \
        for (; t < TILE; t++)                                                                          \
            for (int64_t kk = 0; kk < K; kk++) dst[kk * TILE + t] = 0.0f;                              \
    }

#define LOAD_F32(v) (v)
DEFINE_TILE(tile_f32, float, LOAD_F32, load8_f32)
DEFINE_TILE(tile_bf16, uint16_t, widen_bf16, load8_bf16)

static inline float dot_tile(const float *restrict a, const float *restrict b) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int t = 0; t < TILE; t++) s += a[t] * b[t];
    return s;
}

/* four dot products sharing `a` at once (independent accumulators hide the FMA latency) */
static inline void dot_tile4(const float *restrict a, const float *restrict b_tile, const int32_t *cols,
                             float *restrict out) {
    const float *b0 = b_tile + (int64_t)cols[0] * TILE, *b1 = b_tile + (int64_t)cols[1] * TILE;
    const float *b2 = b_tile + (int64_t)cols[2] * TILE, *b3 = b_tile + (int64_t)cols[3] * TILE;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int t = 0; t < TILE; t++) {
        s0 += a[t] * b0[t];
        s1 += a[t] * b1[t];
        s2 += a[t] * b2[t];
        s3 += a[t] * b3[t];
    }
    out[0] += s0;
    out[1] += s1;
    out[2] += s2;
    out[3] += s3;
}

/* Rows [r_begin, r_end) over tokens [n_begin, n_end), using one thread's tiles (a_tile: R x TILE, b_tile). */
static void sampled_rows(const void *A, int64_t lda, const void *B, int64_t ldb, int is_bf16, int64_t n_begin,
                         int64_t n_end, int64_t r_begin, int64_t r_end, int64_t C, const int32_t *crow,
                         const int32_t *col, float *out, float *a_tile, float *b_tile) {
    int64_t R = r_end - r_begin;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += TILE) {
        int count = (int)(n_end - n0 < TILE ? n_end - n0 : TILE);
        if (is_bf16) {
            tile_bf16((const uint16_t *)A + r_begin, lda, n0, count, R, a_tile);
            tile_bf16((const uint16_t *)B, ldb, n0, count, C, b_tile);
        } else {
            tile_f32((const float *)A + r_begin, lda, n0, count, R, a_tile);
            tile_f32((const float *)B, ldb, n0, count, C, b_tile);
        }
        for (int64_t i = 0; i < R; i++) {
            const float *a = a_tile + i * TILE;
            int32_t e = crow[r_begin + i], end = crow[r_begin + i + 1];
            for (; e + 4 <= end; e += 4) dot_tile4(a, b_tile, col + e, out + e);
            for (; e < end; e++) out[e] += dot_tile(a, b_tile + (int64_t)col[e] * TILE);
        }
    }
}

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define HAVE_DPBF16 1
/* The bf16 tile, kept in bf16: dst[k * TILE + t] = src[(n0 + t) * ld + k], zero-padded to TILE tokens. Blocks of
 * 16 tokens x 8 columns: the rows of tokens t and t + 1 are interleaved into 32-bit units (t, t + 1) per column,
 * then the 8 x 8 block of units is transposed, so each stored unit holds two consecutive tokens of one column,
 * the pair layout vdpbf16ps multiplies. */
static void tile_bf16_kept(const uint16_t *src, int64_t ld, int64_t n0, int count, int64_t K,
                           uint16_t *restrict dst) {
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        int t = 0;
        for (; t + 16 <= count; t += 16) {
            __m256 r[8];
            for (int p = 0; p < 8; p++) {
                __m128i x0 = _mm_loadu_si128((const __m128i *)(src + (n0 + t + 2 * p) * ld + k));
                __m128i x1 = _mm_loadu_si128((const __m128i *)(src + (n0 + t + 2 * p + 1) * ld + k));
                __m128i lo = _mm_unpacklo_epi16(x0, x1), hi = _mm_unpackhi_epi16(x0, x1);
                r[p] = _mm256_castsi256_ps(_mm256_set_m128i(hi, lo));
            }
            store_transposed8(r, (float *)(dst + k * TILE + t), TILE / 2);
        }
        for (; t < count; t++)
            for (int64_t kk = k; kk < k + 8; kk++) dst[kk * TILE + t] = src[(n0 + t) * ld + kk];
        for (; t < TILE; t++)
            for (int64_t kk = k; kk < k + 8; kk++) dst[kk * TILE + t] = 0;
    }
    for (; k < K; k++) {
        int t = 0;
        for (; t < count; t++) dst[k * TILE + t] = src[(n0 + t) * ld + k];
        for (; t < TILE; t++) dst[k * TILE + t] = 0;
    }
}

/* four bf16 dot products sharing `a`, 32 tokens per instruction into 16 fp32 lanes each */
static inline void dot_bf16x4(const uint16_t *restrict a, const uint16_t *restrict b_tile, const int32_t *cols,
                              float *restrict out) {
    const uint16_t *b0 = b_tile + (int64_t)cols[0] * TILE, *b1 = b_tile + (int64_t)cols[1] * TILE;
    const uint16_t *b2 = b_tile + (int64_t)cols[2] * TILE, *b3 = b_tile + (int64_t)cols[3] * TILE;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int t = 0; t < TILE; t += 32) {
        __m512bh av = (__m512bh)_mm512_loadu_si512(a + t);
        s0 = _mm512_dpbf16_ps(s0, av, (__m512bh)_mm512_loadu_si512(b0 + t));
        s1 = _mm512_dpbf16_ps(s1, av, (__m512bh)_mm512_loadu_si512(b1 + t));
        s2 = _mm512_dpbf16_ps(s2, av, (__m512bh)_mm512_loadu_si512(b2 + t));
        s3 = _mm512_dpbf16_ps(s3, av, (__m512bh)_mm512_loadu_si512(b3 + t));
    }
    out[0] += _mm512_reduce_add_ps(s0);
    out[1] += _mm512_reduce_add_ps(s1);
    out[2] += _mm512_reduce_add_ps(s2);
    out[3] += _mm512_reduce_add_ps(s3);
}

static inline float dot_bf16(const uint16_t *restrict a, const uint16_t *restrict b) {
    __m512 s = _mm512_setzero_ps();
    for (int t = 0; t < TILE; t += 32)
        s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(a + t), (__m512bh)_mm512_loadu_si512(b + t));
    return _mm512_reduce_add_ps(s);
}

/* `sampled_rows` for bf16 operands on bf16 tiles (a_tile: R x TILE, b_tile: C x TILE, both uint16) */
static void sampled_rows_bf16(const uint16_t *A, int64_t lda, const uint16_t *B, int64_t ldb, int64_t n_begin,
                              int64_t n_end, int64_t r_begin, int64_t r_end, int64_t C, const int32_t *crow,
                              const int32_t *col, float *out, uint16_t *a_tile, uint16_t *b_tile) {
    int64_t R = r_end - r_begin;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += TILE) {
        int count = (int)(n_end - n0 < TILE ? n_end - n0 : TILE);
        tile_bf16_kept(A + r_begin, lda, n0, count, R, a_tile);
        tile_bf16_kept(B, ldb, n0, count, C, b_tile);
        for (int64_t i = 0; i < R; i++) {
            const uint16_t *a = a_tile + i * TILE;
            int32_t e = crow[r_begin + i], end = crow[r_begin + i + 1];
            for (; e + 4 <= end; e += 4) dot_bf16x4(a, b_tile, col + e, out + e);
            for (; e < end; e++) out[e] += dot_bf16(a, b_tile + (int64_t)col[e] * TILE);
        }
    }
}
#endif

/* first row whose entries start at or after `target` (crow is nondecreasing) */
static int64_t row_at(const int32_t *crow, int64_t R, int64_t target) {
    int64_t lo = 0, hi = R;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (crow[mid] < target) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* The entry point. `out` must hold zeros (or values to add to). With OpenMP, `threads` threads each take a band
 * of rows holding about nnz / threads entries; `work` holds threads * (R + C) * TILE floats, the caller's,
 * reused across calls (a fresh buffer per call pays for new pages). */
void sparta_sampled_dot(const void *A, int64_t lda, const void *B, int64_t ldb, int is_bf16, int64_t n_begin,
                        int64_t n_end, int64_t R, int64_t C, const int32_t *crow, const int32_t *col, float *out,
                        float *work, int threads) {
    int64_t nnz = crow[R];
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)
#endif
    for (int t = 0; t < threads; t++) {
        int64_t r0 = row_at(crow, R, nnz * t / threads);
        int64_t r1 = t + 1 == threads ? R : row_at(crow, R, nnz * (t + 1) / threads);
        float *a_tile = work + (int64_t)t * (R + C) * TILE, *b_tile = a_tile + (r1 - r0) * TILE;
#ifdef HAVE_DPBF16
        if (r1 > r0 && is_bf16) {
            uint16_t *at = (uint16_t *)a_tile, *bt = at + (r1 - r0) * TILE;
            sampled_rows_bf16((const uint16_t *)A, lda, (const uint16_t *)B, ldb, n_begin, n_end, r0, r1, C, crow,
                              col, out, at, bt);
            continue;
        }
#endif
        if (r1 > r0)
            sampled_rows(A, lda, B, ldb, is_bf16, n_begin, n_end, r0, r1, C, crow, col, out, a_tile, b_tile);
    }
}

/* tokens per tile: the caller sizes `work` with it */
int sparta_tile(void) { return TILE; }

/* 1 when bf16 operands use the CPU's bf16 dot products (AVX512-BF16), 0 when they are widened to fp32 */
int sparta_bf16_dot(void) {
#ifdef HAVE_DPBF16
    return 1;
#else
    return 0;
#endif
}

/* 1 when built with OpenMP (threads > 1 then run in parallel), else 0 */
int sparta_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

// einscade native CPU kernel: masked softmax attention over a block layout's tile groups.
//
// One work item is (key head bk, query tile t of a group). Its query rows (the G query heads
// sharing key head bk, stacked: row g * Tq + i) are transposed once and pre-scaled
// (Q^T [E, rows]); its keys are walked in equal chunks of at most KEY_CHUNK: S^T = K Q^T by
// a register-blocked micro-kernel reading the K rows in place, the element mask on the
// chunk's masked columns, the online softmax update (running max m, running sum l, O
// rescaled by exp(m_old - m_new)) vectorised across query rows, O += P V by the same
// micro-kernel reading the V rows in place. At the end out = O / l (a row that saw no
// allowed key: 0). Scores never leave the core's cache; nothing here is N x N. The output
// is written with streaming stores: on tiles of 64 x 64 the memory traffic (every Q, K, V
// row read once, every output row written once), not the FLOPs, bounds the kernel, and
// software prefetching of the next item measured no faster.
//
// Portable C++: GCC vector extensions (16 floats with AVX-512, 8 otherwise) compile to
// whatever -march allows; FMAs come from -ffp-contract=fast. Work items go through an
// atomic counter to the threads of an OpenMP parallel region: built with -fopenmp, that is
// torch's own runtime and thread pool (std::threads without it).
// Build and load: einscade/codegen/native/library.py.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <limits>
#include <thread>
#include <vector>

namespace {

// Vectors of 16 floats where the target has 32 vector registers of that width (AVX-512),
// else of 8 (AVX2 and older: 16 registers, so the micro-kernel gets fewer columns).
#ifdef __AVX512F__
#define EINSCADE_VECTOR_BYTES 64
#define EINSCADE_COLS 4
#else
#define EINSCADE_VECTOR_BYTES 32
#define EINSCADE_COLS 2
#endif
typedef float vf __attribute__((vector_size(EINSCADE_VECTOR_BYTES)));
typedef float vf_unaligned __attribute__((vector_size(EINSCADE_VECTOR_BYTES), aligned(4)));
typedef int32_t vi __attribute__((vector_size(EINSCADE_VECTOR_BYTES)));
constexpr int64_t W = EINSCADE_VECTOR_BYTES / 4;  // floats per vector
constexpr int64_t ROWS = 4;        // rows per micro-kernel block
constexpr int64_t COLS = EINSCADE_COLS;  // vectors per micro-kernel block
constexpr int64_t KEY_CHUNK = 512; // keys per online-softmax step: S^T and V stay in L2
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

inline vf load(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vf_unaligned*>(p) = x; }
inline vf splat(float x) {  // vbroadcastss
#if EINSCADE_VECTOR_BYTES == 64
  return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
#else
  return vf{x, x, x, x, x, x, x, x};
#endif
}
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Keys per online-softmax step: equal chunks of at most KEY_CHUNK (575 keys: 2 x 288, not
// 512 + 63), a multiple of ROWS.
inline int64_t chunk_length(int64_t keys) {
  const int64_t chunks = (keys + KEY_CHUNK - 1) / KEY_CHUNK;
  return round_up((keys + chunks - 1) / chunks, ROWS);
}

// Non-temporal stores of whole 64-byte lines, where the target has them (AVX-512).
inline bool can_stream(const float* base, int64_t width) {
#ifdef __AVX512F__
  return width % W == 0 && reinterpret_cast<uintptr_t>(base) % 64 == 0;
#else
  (void)base, (void)width;
  return false;
#endif
}

inline void stream(float* p, vf x) {
#ifdef __AVX512F__
  _mm512_stream_ps(p, __builtin_bit_cast(__m512, x));
#else
  store(p, x);
#endif
}

// exp(x) for x <= 0 (scores minus their running max): 2^n * e^r, |r| <= ln2 / 2, degree-6
// polynomial (relative error ~2e-7); x below -87 (including -inf: masked) gives exactly 0.
inline vf exp_nonpositive(vf x) {
  const vf low = splat(-87.0f);
  vf clamped = x < low ? low : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = (clamped * splat(1.44269504088896341f) + magic) - magic;
  vf r = clamped - n * splat(0.693145751953125f) - n * splat(1.428606765330187e-06f);
  vf p = splat(1.0f / 720);
  p = p * r + splat(1.0f / 120);
  p = p * r + splat(1.0f / 24);
  p = p * r + splat(1.0f / 6);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf result = p * __builtin_bit_cast(vf, bits);
  return x < low ? splat(0.0f) : result;
}

// C[r, v*W ..] (+)= sum_d A(r, d) * B(d, v*W ..) for R rows and NV vectors of columns, the
// R * NV accumulators in registers. A(r, d) = a_rows[r][d * a_step]; B's row d starts at
// b_rows[d]. Rows by pointer let K and V rows be read in place (no gather).
template <int R, int NV, bool ACCUMULATE>
inline void micro(const float* const* a_rows, int64_t a_step, const float* const* b_rows,
                  int64_t b_col, int64_t depth, float* c, int64_t ldc) {
  vf acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = ACCUMULATE ? load(c + r * ldc + v * W) : vf{};
  for (int64_t d = 0; d < depth; ++d) {
    const float* b = b_rows[d] + b_col;
    vf row[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) row[v] = load(b + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      vf x = splat(a_rows[r][d * a_step]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += x * row[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store(c + r * ldc + v * W, acc[r][v]);
}

// C[rows, cols] (+)= A[rows, depth] B[depth, cols] (A, B as in micro); rows % ROWS == 0,
// cols % W == 0.
template <bool ACCUMULATE>
void gemm(const float* const* a_rows, int64_t a_step, const float* const* b_rows,
          int64_t depth, float* c, int64_t ldc, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r += ROWS) {
    const float* const* a = a_rows + r;
    float* c_rows = c + r * ldc;
    int64_t col = 0;
    for (; col + COLS * W <= cols; col += COLS * W)
      micro<ROWS, COLS, ACCUMULATE>(a, a_step, b_rows, col, depth, c_rows + col, ldc);
    switch ((cols - col) / W) {
      case 3: micro<ROWS, 3, ACCUMULATE>(a, a_step, b_rows, col, depth, c_rows + col, ldc); break;
      case 2: micro<ROWS, 2, ACCUMULATE>(a, a_step, b_rows, col, depth, c_rows + col, ldc); break;
      case 1: micro<ROWS, 1, ACCUMULATE>(a, a_step, b_rows, col, depth, c_rows + col, ldc); break;
      default: break;
    }
  }
}

}  // namespace

extern "C" {

// The canonical operands: q [BK, G, P, E], k [BK, M, E], v [BK, M, F], out [BK, G, P, F],
// all contiguous float32 (query head bk * G + g reads key head bk).
struct EinscadeProblem {
  const float* q;
  const float* k;
  const float* v;
  float* out;
  int64_t kv_heads, heads, queries, keys, qk_dim, v_dim;
};

// A tile group: query tokens [tiles, tile_queries], key tokens [tiles, tile_keys] (int64),
// and the element mask of key columns mask_from: as an additive bias, key-major (float
// [mask_tiles, tile_keys - mask_from, tile_queries], 0 allowed, -inf not; mask_tiles 0: no
// mask, 1: shared by every tile, else one per tile).
struct EinscadeGroup {
  const int64_t* query_tokens;
  const int64_t* key_tokens;
  const float* bias;
  int64_t tiles, tile_queries, tile_keys, mask_tiles, mask_from;
};

}  // extern "C"


namespace {

struct Scratch {
  std::vector<float> qt, st, o, v, zeros;
  std::vector<const float*> q_rows, k_rows, v_rows, p_rows;
};

float* sized(std::vector<float>& buffer, int64_t count) {
  if (static_cast<int64_t>(buffer.size()) < count) buffer.assign(count, 0.0f);
  return buffer.data();
}

const float** pointers(std::vector<const float*>& buffer, int64_t count) {
  if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(count);
  return buffer.data();
}

// One work item: key head bk, tile t of group g. Rows r = h * Tq + i stack the query heads.
struct Item {
  const EinscadeProblem& p;
  const EinscadeGroup& g;
  int64_t bk, t;
  float scale;
  int64_t rows, rows_padded, v_cols;
};

// W x W transpose in registers: for h = W / 2, ..., 2, 1 the two off-diagonal h x h blocks of
// every 2h x 2h block swap (two-source shuffles); after the four stages m is transposed.
inline void transpose(vf m[W]) {
#pragma GCC unroll 4
  for (int h = W / 2; h >= 1; h /= 2) {
    vi low, high;
    for (int c = 0; c < W; ++c) {
      low[c] = (c & h) ? W + c - h : c;
      high[c] = (c & h) ? W + c : c + h;
    }
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i) {
      if (i & h) continue;
      const vf a = m[i], b = m[i + h];
      m[i] = __builtin_shuffle(a, b, low);
      m[i + h] = __builtin_shuffle(a, b, high);
    }
  }
}

// Q^T [E, rows_padded], scaled; padding rows are zero. q_rows[d] points at row d. Blocks
// of W rows x W dims go through transpose; a dim tail (E % W) is copied one by one.
void transpose_queries(const Item& it, Scratch& s) {
  const EinscadeProblem& p = it.p;
  const int64_t tq = it.g.tile_queries, e = p.qk_dim, ld = it.rows_padded;
  float* qt = sized(s.qt, e * ld);
  const int64_t* tokens = it.g.query_tokens + it.t * tq;
  const float** source = pointers(s.k_rows, ld);  // (k_rows is free until the key chunks)
  for (int64_t r = 0; r < ld; ++r) {
    const int64_t h = r / tq, i = r % tq;
    source[r] = r < it.rows ? p.q + ((it.bk * p.heads + h) * p.queries + tokens[i]) * e
                            : s.zeros.data();
  }
  const vf scale = splat(it.scale);
  const int64_t full = e / W * W;
  for (int64_t r0 = 0; r0 < ld; r0 += W) {
    for (int64_t d0 = 0; d0 < full; d0 += W) {
      vf block[W];
      for (int w = 0; w < W; ++w) block[w] = load(source[r0 + w] + d0) * scale;
      transpose(block);
      for (int w = 0; w < W; ++w) store(qt + (d0 + w) * ld + r0, block[w]);
    }
    for (int64_t d = full; d < e; ++d)
      for (int w = 0; w < W; ++w) qt[d * ld + r0 + w] = source[r0 + w][d] * it.scale;
  }
  const float** rows = pointers(s.q_rows, e);
  for (int64_t d = 0; d < e; ++d) rows[d] = qt + d * ld;
}

// Row pointers of the chunk's keys [c0, c0 + count), padded to `padded` with a zero row.
// V rows are read in place when F is a multiple of W, else copied into padded rows.
void key_rows(const Item& it, Scratch& s, int64_t c0, int64_t count, int64_t padded) {
  const EinscadeProblem& p = it.p;
  const int64_t e = p.qk_dim, f = p.v_dim, vc = it.v_cols;
  const float* zeros = s.zeros.data();
  const int64_t* tokens = it.g.key_tokens + it.t * it.g.tile_keys + c0;
  const float* k_head = p.k + it.bk * p.keys * e;
  const float* v_head = p.v + it.bk * p.keys * f;
  const float** k = pointers(s.k_rows, padded);
  const float** v = pointers(s.v_rows, padded);
  float* copies = f == vc ? nullptr : sized(s.v, count * vc);
  for (int64_t j = 0; j < count; ++j) {
    k[j] = k_head + tokens[j] * e;
    v[j] = v_head + tokens[j] * f;
    if (copies != nullptr) {
      std::memcpy(copies + j * vc, v[j], f * sizeof(float));
      std::fill(copies + j * vc + f, copies + (j + 1) * vc, 0.0f);
      v[j] = copies + j * vc;
    }
  }
  for (int64_t j = count; j < padded; ++j) k[j] = v[j] = zeros;
}

// The chunk's element mask (bias rows of the masked columns) and padding keys (-inf).
void apply_mask(const Item& it, float* st, int64_t c0, int64_t count, int64_t padded) {
  const EinscadeGroup& g = it.g;
  const int64_t tq = g.tile_queries, ld = it.rows_padded;
  for (int64_t j = count; j < padded; ++j) std::fill(st + j * ld, st + (j + 1) * ld, NEG_INF);
  if (g.mask_tiles == 0 || c0 + count <= g.mask_from) return;
  const int64_t width = g.tile_keys - g.mask_from;
  const float* bias = g.bias + (g.mask_tiles == 1 ? 0 : it.t) * width * tq;
  for (int64_t j = std::max<int64_t>(c0, g.mask_from); j < c0 + count; ++j) {
    const float* column = bias + (j - g.mask_from) * tq;
    for (int64_t h = 0; h < it.p.heads; ++h) {
      float* row = st + (j - c0) * ld + h * tq;
      int64_t i = 0;
      for (; i + W <= tq; i += W) store(row + i, load(row + i) + load(column + i));
      for (; i < tq; ++i) row[i] += column[i];
    }
  }
}

// Online softmax over the chunk's key rows of S^T [padded, rows_padded], W query rows at a
// time: S^T becomes P = exp(S - m_new); l and the rows of O are rescaled by
// exp(m_old - m_new). A row with no allowed key so far keeps m = -inf and P = 0.
void online_softmax(const Item& it, float* st, int64_t padded, float* m, float* l, float* o,
                    bool first) {
  const int64_t ld = it.rows_padded, vc = it.v_cols;
  for (int64_t r = 0; r < ld; r += W) {
    vf high = splat(NEG_INF);
    for (int64_t j = 0; j < padded; ++j) {
      vf x = load(st + j * ld + r);
      high = x > high ? x : high;
    }
    const vf old = load(m + r);
    const vf top = old > high ? old : high;
    const vf shift = top == splat(NEG_INF) ? splat(0.0f) : top;
    vf sum = vf{};
    for (int64_t j = 0; j < padded; ++j) {
      vf e = exp_nonpositive(load(st + j * ld + r) - shift);
      store(st + j * ld + r, e);
      sum += e;
    }
    const vf correction = exp_nonpositive(old - shift);
    store(l + r, load(l + r) * correction + sum);
    store(m + r, top);
    for (int64_t w = 0; w < W && !first; ++w) {  // (O is still 0 on the first chunk)
      if (correction[w] == 1.0f) continue;
      float* row = o + (r + w) * vc;
      const vf c = splat(correction[w]);
      for (int64_t f = 0; f < vc; f += W) store(row + f, load(row + f) * c);
    }
  }
}

void write_out(const Item& it, const float* o, const float* l) {
  const EinscadeProblem& p = it.p;
  const int64_t tq = it.g.tile_queries, f = p.v_dim;
  const int64_t* tokens = it.g.query_tokens + it.t * tq;
  const bool streaming = can_stream(p.out, f);
  for (int64_t h = 0; h < p.heads; ++h) {
    float* head = p.out + ((it.bk * p.heads + h) * p.queries) * f;
    for (int64_t i = 0; i < tq; ++i) {
      const int64_t r = h * tq + i;
      const float inverse = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
      float* dst = head + tokens[i] * f;
      const float* src = o + r * it.v_cols;
      if (streaming) {  // whole aligned lines: no read for ownership of lines not kept
        for (int64_t d = 0; d < f; d += W) stream(dst + d, load(src + d) * splat(inverse));
        continue;
      }
      for (int64_t d = 0; d < f; ++d) dst[d] = src[d] * inverse;
    }
  }
}

void attend_item(const Item& it, Scratch& s) {
  const EinscadeProblem& p = it.p;
  const int64_t ld = it.rows_padded, vc = it.v_cols;
  transpose_queries(it, s);
  float* o = sized(s.o, ld * vc + 2 * ld);
  float* m = o + ld * vc;
  float* l = m + ld;
  std::fill(o, o + ld * vc, 0.0f);
  std::fill(m, m + ld, NEG_INF);
  std::fill(l, l + ld, 0.0f);
  const float** p_rows = pointers(s.p_rows, ld);
  const int64_t length = chunk_length(it.g.tile_keys);
  for (int64_t c0 = 0; c0 < it.g.tile_keys; c0 += length) {
    const int64_t count = std::min(length, it.g.tile_keys - c0);
    const int64_t padded = round_up(count, ROWS);
    key_rows(it, s, c0, count, padded);
    float* st = sized(s.st, padded * ld);
    // S^T [keys, rows] = K [keys, E] Q^T [E, rows]
    gemm<false>(s.k_rows.data(), 1, s.q_rows.data(), p.qk_dim, st, ld, padded, ld);
    apply_mask(it, st, c0, count, padded);
    online_softmax(it, st, padded, m, l, o, c0 == 0);
    // O [rows, F] += P [rows, keys] V [keys, F], P(r, j) = S^T[j, r]
    for (int64_t r = 0; r < ld; ++r) p_rows[r] = st + r;
    gemm<true>(p_rows, ld, s.v_rows.data(), padded, o, vc, ld, vc);
  }
  write_out(it, o, l);
}

}  // namespace

extern "C" {

// Runs every (key head, tile) of every group on `threads` threads. Returns 0.
int einscade_attend(const EinscadeProblem* problem, const EinscadeGroup* groups,
                    int64_t group_count, float scale, int64_t threads) {
  std::vector<int64_t> starts(group_count + 1, 0);
  for (int64_t i = 0; i < group_count; ++i)
    starts[i + 1] = starts[i] + problem->kv_heads * groups[i].tiles;
  const int64_t items = starts[group_count];
  const int64_t v_cols = round_up(problem->v_dim, W);
  std::atomic<int64_t> next{0};
  auto item = [&](int64_t index, int64_t& group) {
    while (index >= starts[group + 1]) ++group;
    const EinscadeGroup& g = groups[group];
    const int64_t local = index - starts[group];
    const int64_t rows = problem->heads * g.tile_queries;
    return Item{*problem, g, local / g.tiles, local % g.tiles, scale,
                rows, round_up(rows, W), v_cols};
  };
  auto worker = [&]() {
    Scratch scratch;
    scratch.zeros.assign(std::max(problem->qk_dim, v_cols), 0.0f);
    int64_t group = 0;
    for (int64_t index = next++; index < items; index = next++)
      attend_item(item(index, group), scratch);
#ifdef __AVX512F__
    _mm_sfence();  // the streamed output is visible before the join
#endif
  };
  const int64_t count = std::max<int64_t>(1, std::min(threads, items));
#ifdef _OPENMP
  // torch's own OpenMP runtime (the process has loaded it: libgomp.so.1 resolves to it), so
  // its worker threads, still spinning after the previous torch op, run these items too
  // instead of competing for the cores with threads of ours.
#pragma omp parallel num_threads(count)
  worker();
#else
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < count; ++i) pool.emplace_back(worker);
  worker();
  for (auto& thread : pool) thread.join();
#endif
  return 0;
}

}  // extern "C"

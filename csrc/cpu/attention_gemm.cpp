// attention_gemm on the CPU: each function is one MKL cblas_sgemm_batch over the B*A (batch,
// head) problems, with pointers into the packed layouts of bertperf/attention_gemm.h. The MKL
// symbol is declared weak: a torch built without MKL leaves it null, and
// attention_gemm_available() says so (the caller then copies q, k, v into [B, A, S, d] and uses
// torch's bmm).
#include "bertperf/attention_gemm.h"

#include <vector>

extern "C" {
// MKL's group batch GEMM (mkl_cblas.h, LP64: MKL_INT = int; CBLAS enums are ints).
void cblas_sgemm_batch(int layout, const int* transa, const int* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float** a, const int* lda,
                       const float** b, const int* ldb, const float* beta, float** c, const int* ldc,
                       int group_count, const int* group_size) __attribute__((weak));
}

namespace bertperf {
namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// One operand of the batch: element (b, a) starts at base + b * batch_stride + a * head_stride.
struct Operand {
  const float* base;
  int64_t batch_stride, head_stride;
  int ld;
  bool trans;
};

// C(b, a) [m, n] = op(A(b, a)) [m, k] x op(B(b, a)) [k, n] for every (b, a), C overwritten.
void gemm_grid(const AttentionDims& dims, int m, int n, int k, Operand A, Operand B, Operand C) {
  const int64_t count = dims.batch * dims.heads;
  std::vector<const float*> pa(count), pb(count);
  std::vector<float*> pc(count);
  for (int64_t b = 0; b < dims.batch; ++b) {
    for (int64_t h = 0; h < dims.heads; ++h) {
      const int64_t i = b * dims.heads + h;
      pa[i] = A.base + b * A.batch_stride + h * A.head_stride;
      pb[i] = B.base + b * B.batch_stride + h * B.head_stride;
      pc[i] = const_cast<float*>(C.base) + b * C.batch_stride + h * C.head_stride;
    }
  }
  const int ta = A.trans ? kTrans : kNoTrans, tb = B.trans ? kTrans : kNoTrans;
  const float one = 1.0f, zero = 0.0f;
  const int group = static_cast<int>(count);
  cblas_sgemm_batch(kRowMajor, &ta, &tb, &m, &n, &k, &one, pa.data(), &A.ld, pb.data(), &B.ld, &zero,
                    pc.data(), &C.ld, 1, &group);
}

// The operands of one head in the packed layouts.
struct Layout {
  int64_t S, h, d, A;
  explicit Layout(const AttentionDims& dims)
      : S(dims.seq), h(dims.heads * dims.head_dim), d(dims.head_dim), A(dims.heads) {}
  // q (j = 0), k (1) or v (2) of qkv [B, S, 3h]
  Operand qkv(const float* base, int j, bool trans = false) const {
    return {base + j * h, S * 3 * h, d, static_cast<int>(3 * h), trans};
  }
  // a [B, A, S, S] tensor
  Operand square(const float* base, bool trans = false) const {
    return {base, A * S * S, S * S, static_cast<int>(S), trans};
  }
  // ctx [B, S, h]
  Operand ctx(const float* base, bool trans = false) const {
    return {base, S * h, d, static_cast<int>(h), trans};
  }
};

}  // namespace

bool attention_gemm_available() { return cblas_sgemm_batch != nullptr; }

void attention_scores_cpu(const float* qkv, float* scores, AttentionDims dims) {
  const Layout L(dims);
  const int S = static_cast<int>(L.S), d = static_cast<int>(L.d);
  gemm_grid(dims, S, S, d, L.qkv(qkv, 0), L.qkv(qkv, 1, true), L.square(scores));
}

void attention_context_cpu(const float* probs, const float* qkv, float* ctx, AttentionDims dims) {
  const Layout L(dims);
  const int S = static_cast<int>(L.S), d = static_cast<int>(L.d);
  gemm_grid(dims, S, d, S, L.square(probs), L.qkv(qkv, 2), L.ctx(ctx));
}

void attention_context_bwd_cpu(const float* dctx, const float* probs, const float* qkv, float* dprobs,
                               float* dqkv, AttentionDims dims) {
  const Layout L(dims);
  const int S = static_cast<int>(L.S), d = static_cast<int>(L.d);
  gemm_grid(dims, S, S, d, L.ctx(dctx), L.qkv(qkv, 2, true), L.square(dprobs));  // dP = dC V^T
  gemm_grid(dims, S, d, S, L.square(probs, true), L.ctx(dctx), L.qkv(dqkv, 2));  // dV = P^T dC
}

void attention_scores_bwd_cpu(const float* dscores, const float* qkv, float* dqkv, AttentionDims dims) {
  const Layout L(dims);
  const int S = static_cast<int>(L.S), d = static_cast<int>(L.d);
  gemm_grid(dims, S, d, S, L.square(dscores), L.qkv(qkv, 1), L.qkv(dqkv, 0));        // dQ = dS K
  gemm_grid(dims, S, d, S, L.square(dscores, true), L.qkv(qkv, 0), L.qkv(dqkv, 1));  // dK = dS^T Q
}

}  // namespace bertperf

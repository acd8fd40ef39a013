// attention_gemm: the four batched GEMMs of BERT attention, read and written in place in the
// packed layouts the model already has, so no [B, A, S, d] copies are made (CPU, fp32 only).
//
// Layouts (all row-major, contiguous):
//   qkv   [B, S, 3h]: the fused QKV projection's output; q of head a at columns [a d, (a+1) d),
//                     k at h + ..., v at 2h + ...; h = A d.
//   p     [B, A, S, S]: scores, probabilities and their gradients.
//   ctx   [B, S, h]: the attention output, heads side by side (what the output projection reads).
//   dqkv  [B, S, 3h]: the gradient of qkv, same layout.
// Per (b, a), with Q, K, V the [S, d] blocks of qkv (leading dimension 3h) and C, dC the [S, d]
// blocks of ctx / its gradient (leading dimension h):
//   scores:       S  = Q K^T           (the softmax applies the 1/sqrt(d) scale)
//   context:      C  = P V
//   context_bwd:  dP = dC V^T;  dV = P^T dC
//   scores_bwd:   dQ = dS K;  dK = dS^T Q
// Each call is one MKL cblas_sgemm_batch over the B*A problems (MKL threads them). MKL comes with
// torch's CPU build (libtorch_cpu exports the symbol); attention_gemm_available() is false where
// it does not, and the caller then takes the copying path. Bytes: every GEMM reads its operands
// and writes its result once; the copying path also moves q, k, v, ctx and their gradients
// through contiguous [B, A, S, d] buffers (about 2 x 5 x B S h floats per layer and step).
#pragma once

#include <stdint.h>

namespace bertperf {

struct AttentionDims {
  int64_t batch, seq, heads, head_dim;  // B, S, A, d
};

bool attention_gemm_available();
void attention_scores_cpu(const float* qkv, float* scores, AttentionDims dims);
void attention_context_cpu(const float* probs, const float* qkv, float* ctx, AttentionDims dims);
void attention_context_bwd_cpu(const float* dctx, const float* probs, const float* qkv,
                               float* dprobs, float* dqkv, AttentionDims dims);
void attention_scores_bwd_cpu(const float* dscores, const float* qkv, float* dqkv, AttentionDims dims);

}  // namespace bertperf

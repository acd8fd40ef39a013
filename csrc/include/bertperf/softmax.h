// softmax: attention probabilities y = dropout(softmax(x * scale + mask), p) over the last dim,
// for the attention path that does not use SDPA.
//
// Shapes: x, y, probs, dy, dx: [B, H, Sq, Sk] contiguous viewed as rows = B*H*Sq rows of
// cols = Sk, element type T (fp32, bf16; fp64 on the CPU). mask: additive, in A = acc_t<T>,
// broadcast to [B, H, Sq, Sk] through element strides (mask_sb, mask_sh, mask_sq; 0 for a
// broadcast dim) with a contiguous last dim; may be null. Dropout uses the counter-based hash
// over flat indices (mod 2^32), regenerated in the backward, so only the pre-dropout
// probabilities are kept (`probs`; without dropout y is probs):
//   backward with g = dy * factor:  dx = scale * probs * (g - sum_row(g * probs))
#pragma once

#include "bertperf/common.h"

namespace bertperf {

template <typename A>
BP_HD A softmax_logit(A x, A scale, A mask) {
  return x * scale + mask;
}

template <typename A>
BP_HD A softmax_grad(A probs, A g, A dot, A scale) {
  return scale * probs * (g - dot);
}

struct SoftmaxFwdArgs {
  const void* x;      // [rows, cols] T
  const void* mask;   // A, see strides below, or null
  void* y;            // [rows, cols] T: dropped-out probabilities (= probs without dropout)
  void* probs;        // [rows, cols] T: pre-dropout probabilities; null when no dropout
  int64_t rows, cols;
  int64_t heads, q_len;                 // rows = batch * heads * q_len
  int64_t mask_sb, mask_sh, mask_sq;    // mask element strides for batch, head, query
  double scale;
  DropoutParams drop;
  int32_t dtype;
  int32_t num_threads;
};

struct SoftmaxBwdArgs {
  const void* dy;     // [rows, cols] T
  const void* probs;  // [rows, cols] T: pre-dropout probabilities
  void* dx;           // [rows, cols] T
  int64_t rows, cols;
  double scale;
  DropoutParams drop;
  int32_t dtype;
  int32_t num_threads;
};

// Offset of row r's mask row (r = (b * heads + h) * q_len + q).
BP_HD int64_t softmax_mask_offset(int64_t r, int64_t heads, int64_t q_len, int64_t sb, int64_t sh,
                                  int64_t sq) {
  const int64_t q = r % q_len;
  const int64_t bh = r / q_len;
  return (bh / heads) * sb + (bh % heads) * sh + q * sq;
}

#if !defined(__CUDACC__)
void softmax_fwd_cpu(const SoftmaxFwdArgs& args);
void softmax_bwd_cpu(const SoftmaxBwdArgs& args);
#endif

}  // namespace bertperf

extern "C" {
int bertperf_softmax_fwd_cuda(const bertperf::SoftmaxFwdArgs* args, void* stream);
int bertperf_softmax_bwd_cuda(const bertperf::SoftmaxBwdArgs* args, void* stream);
}

// Gathered sparse attention: every query attends exactly to a dense "local" key set shared by its stream (sinks,
// recent window) plus its own list of retrieved keys, merged in one softmax through a log-sum-exp. CPU: the local
// part is a BLAS matmul per block of query rows, the gathered part a multi-threaded loop over queries with
// per-thread scratch allocated once per call (nothing per query).
#pragma once
#include <ATen/core/Tensor.h>

namespace reel {

// q: [S, Lq, D] (already roped), S independent streams (batch x heads).
// kl, vl: [S, Ll, D] local keys/values every query of the stream sees; bl: [S, Ll] logit bias (-inf = padding) or
// undefined.
// kg, vg: [S, Lg, D] the pool retrieved keys index into; bg: [S, Lg] logit bias or undefined.
// sel: [S, Lq, K] int64 rows of kg per query, -1 = no key. A row must not also be in the local set, nor repeat.
// Returns softmax over (local U selected) of (q k / sqrt(D) + bias) times v, as [S, Lq, D] float32. Rows that see
// no key are zero. Equals dense attention over local U pool when sel lists every pool row for every query.
at::Tensor sparse_attention(const at::Tensor& q,
                            const at::Tensor& kl,
                            const at::Tensor& vl,
                            const at::Tensor& bl,
                            const at::Tensor& kg,
                            const at::Tensor& vg,
                            const at::Tensor& bg,
                            const at::Tensor& sel);

}  // namespace reel

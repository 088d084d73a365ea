// autograd/kernels/adamw.hpp — fused optimizer updates over one parameter: AdamW and SGD.
//
// What it is for: the inner loop of optim/ (one call per parameter tensor per step),
// reading and writing the parameter and its optimizer state once, in xsimd vectors over
// OpenMP blocks. Each has a `_naive` twin, a plain scalar loop with the same operations.
//
// What it is not: the optimizer. Parameter groups, learning-rate schedules, gradient
// clipping, the step counter and saving the state live in optim/.
//
// Both follow PyTorch 1.13's single-tensor implementations operation by operation
// (torch/optim/adamw.py `_single_tensor_adamw`, torch/optim/sgd.py `_single_tensor_sgd`),
// so they agree with torch.optim bit for bit (checked in float and double on 10^5
// elements over 5 steps against PyTorch 1.13). Hyper-parameters are double, like Python
// floats, whatever T; coefficients are computed from them in double, as PyTorch's Python
// code does, and rounded to T once (as PyTorch casts a scalar to the tensor's dtype);
// `a.add_(b, alpha=k)` is the fused multiply-add fma(k, b, a) and
// `a.addcmul_(b, c, value=k)` is fma(k*b, c, a), as PyTorch's vectorised CPU kernels
// compute them; `a.addcdiv_(b, c, value=k)` is a + (k*b)/c; `a.mul_(k)` is rounded on its
// own (see Note [Exact rounding in the optimizer kernels] in adamw.cpp).
#pragma once

#include <cstdint>

namespace tg::kernels {

// One AdamW step (decoupled weight decay, Loshchilov & Hutter; torch.optim.AdamW with
// amsgrad=False, maximize=False) over n elements of p, g, m, v (each (n)); step is the
// 1-based number of this step (the first call has step = 1). With k = step:
//   p  = p * (1 - lr*wd)                            decoupled weight decay
//   m  = beta1*m + (1-beta1)*g                      first moment
//   v  = beta2*v + (1-beta2)*g*g                    second moment
//   bc1 = 1 - beta1^k,  bc2 = 1 - beta2^k           bias corrections
//   denom = sqrt(v) / sqrt(bc2) + eps               eps outside the square root
//   p  = p - (lr / bc1) * m / denom
// (the same as p -= lr * mhat / (sqrt(vhat) + eps') with mhat = m/bc1, vhat = v/bc2, up
// to where eps sits: PyTorch adds eps to sqrt(v)/sqrt(bc2), as here).
// Requires lr >= 0, eps >= 0, 0 <= beta1, beta2 < 1, weight_decay >= 0, step >= 1.
template <class T>
void adamw_step(int64_t n, T* p, const T* g, T* m, T* v, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step);
template <class T>
void adamw_step_naive(int64_t n, T* p, const T* g, T* m, T* v, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step);

// One SGD step (torch.optim.SGD, maximize=False) over n elements of p, g and the momentum
// buffer buf (each (n); buf may be nullptr when momentum == 0):
//   d = g + weight_decay * p                        (when weight_decay != 0)
//   if momentum != 0:
//     buf = d                                       on the first step (first_step = true)
//     buf = momentum*buf + (1 - dampening)*d        afterwards
//     d = nesterov ? d + momentum*buf : buf
//   p = p - lr * d
// Requires lr >= 0, momentum >= 0, weight_decay >= 0; nesterov needs momentum > 0 and
// dampening == 0 (as PyTorch).
template <class T>
void sgd_step(int64_t n, T* p, const T* g, T* buf, double lr, double momentum,
              double dampening, double weight_decay, bool nesterov, bool first_step);
template <class T>
void sgd_step_naive(int64_t n, T* p, const T* g, T* buf, double lr, double momentum,
                    double dampening, double weight_decay, bool nesterov, bool first_step);

}  // namespace tg::kernels

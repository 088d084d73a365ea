// nn/train_step.cpp — see train_step.hpp.
#include "nn/train_step.hpp"

#include <cmath>

#include "optim/clip.hpp"

namespace tg::train {

template <class T>
StepResult train_step(nn::CausalLM<T>& model, optim::Optimizer<T>& opt, const Index& batch, double lr, double clip) {
  opt.zero_grad();
  const nn::LossOutput<T> out = model.loss(batch);  // forward: logits (B,T,V), loss []
  out.loss.backward();
  StepResult r;
  r.grad_norm = clip > 0 ? optim::clip_grad_norm(opt.parameters(), clip) : optim::grad_norm(opt.parameters());
  r.loss = static_cast<double>(out.ce.item());
  r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (!r.finite) return r;  // nothing changes: the caller reports the divergence
  opt.set_lr(lr);
  opt.step();
  return r;
}

template StepResult train_step<float>(nn::CausalLM<float>&, optim::Optimizer<float>&, const Index&, double, double);
template StepResult train_step<double>(nn::CausalLM<double>&, optim::Optimizer<double>&, const Index&, double,
                                       double);

}  // namespace tg::train

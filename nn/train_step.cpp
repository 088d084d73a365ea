// nn/train_step.cpp — see train_step.hpp.
#include "nn/train_step.hpp"

#include <algorithm>
#include <cmath>

#include "optim/clip.hpp"

namespace tg::train {

template <class T>
StepResult train_step(nn::CausalLM<T>& model, optim::Optimizer<T>& opt, const Index& batch, double lr, double clip,
                      const DataParallel<T>* parallel) {
  opt.zero_grad();
  const nn::LossOutput<T> out = model.loss(batch);  // forward: logits (B,T,V), loss []
  if (parallel) {
    // d(global mean)/d(this share's mean) = rows / B (Note [Batch shares]); buckets of
    // finished gradients start while backward goes on.
    parallel->reducer->begin();
    out.loss.backward(xt::xarray<T>(static_cast<T>(parallel->weight)));
    parallel->reducer->finish();  // every rank: the same summed gradients
  } else {
    out.loss.backward();
  }
  StepResult r;
  r.grad_norm = clip > 0 ? optim::clip_grad_norm(opt.parameters(), clip) : optim::grad_norm(opt.parameters());
  r.loss = static_cast<double>(out.ce.item());
  if (parallel) r.loss = parallel->group.sum(parallel->weight * r.loss);  // rank order: the same bits everywhere
  r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (!r.finite) return r;  // nothing changes: the caller reports the divergence
  opt.set_lr(lr);
  opt.step();
  return r;
}

Index batch_share(const Index& batch, const dist::Group& group) {
  if (group.size() == 1) return batch;
  const std::size_t B = batch.shape()[0], W = batch.shape()[1];
  dist::check_batch(B, group.size());
  const std::size_t a = dist::share_begin(B, group.size(), group.rank());
  const std::size_t e = dist::share_begin(B, group.size(), group.rank() + 1);
  Index x = Index::from_shape({e - a, W});  // (rows, T+1)
  std::copy_n(batch.data() + a * W, (e - a) * W, x.data());
  return x;
}

template StepResult train_step<float>(nn::CausalLM<float>&, optim::Optimizer<float>&, const Index&, double, double,
                                      const DataParallel<float>*);
template StepResult train_step<double>(nn::CausalLM<double>&, optim::Optimizer<double>&, const Index&, double,
                                       double, const DataParallel<double>*);

}  // namespace tg::train

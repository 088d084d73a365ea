// autograd/activation_checkpoint.hpp — activation checkpointing: trade compute for memory.
//
// What it is for: training with longer sequences (or bigger batches) than the activations
// of a whole forward would fit. checkpoint(fn, inputs) runs fn, keeps only its inputs and
// outputs, and runs fn once more inside backward to get back what its backward needs.
//
// What it is not: automatic. You choose the segments (CausalLM::set_checkpoint_layers puts
// each decoder layer in one; `tapegrad train --checkpoint-activations` turns that on).
//
// Note [Activation checkpointing]
// Forward: fn(inputs) runs with recording on, so that the leaves it reads (a layer's
// weights, captured by the closure) can be found on the tape; then its graph is dropped
// and one node, "checkpoint", stands for the whole segment: its inputs are `inputs` plus
// those leaves, its output the segment's outputs side by side (returned split and
// reshaped, so each output is a tensor of its own). The memory of the segment's
// intermediates is freed as soon as fn returns.
// Backward: the node runs fn again with recording on, on copies of the inputs (leaves of
// their own), walks that graph back from its outputs (a walk inside the walk,
// Tape::run_backward with min_id), adds the copies' gradients to the real inputs, and
// the leaves get theirs directly; then the recomputed graph is freed. So the peak memory
// is the segments' inputs plus one segment's activations, and the cost is one more
// forward per segment. With create_graph the node's vjp recomputes fn on the real inputs
// instead, so second order works through a checkpoint too.
// Rules: fn is kept until backward has run it again, so it must hold what it reads by
// value (Tensor handles are cheap to copy), not by reference to a caller's locals; it must compute the same values when run again (no fresh randomness; checked: a
// recomputation that differs is an error); every tensor fn reads that needs a gradient
// must be in `inputs` or be a leaf (a tensor made by an op outside the segment and only
// captured would get no gradient: refused, naming its op); gradient hooks registered by
// fn on its own intermediates run only if fn registers them again when it reruns.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/tensor.hpp"

namespace tg {

template <class T>
using SegmentFn = std::function<std::vector<Tensor<T>>(const std::vector<Tensor<T>>& inputs)>;

// fn(inputs), checkpointed (Note [Activation checkpointing]). Undefined inputs are passed
// through as undefined. Outside grad mode, or when nothing fn reads requires grad, this is
// just fn(inputs). `name` appears in the tape dump ("checkpoint[layer 3]").
template <class T>
std::vector<Tensor<T>> checkpoint(const SegmentFn<T>& fn, const std::vector<Tensor<T>>& inputs,
                                  const std::string& name = {});

}  // namespace tg

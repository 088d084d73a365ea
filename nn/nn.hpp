// nn/nn.hpp — include this to get all of tapegrad's nn: modules, layers, attention with
// the gating zoo, the causal LM, its configuration,
// safetensors I/O.
//
#pragma once
#include "nn/attention.hpp"
#include "nn/config.hpp"
#include "nn/layers.hpp"
#include "nn/model.hpp"
#include "nn/module.hpp"
#include "nn/safetensors.hpp"

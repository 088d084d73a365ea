// autograd/autograd.hpp — include this to get all of tapegrad's engine.
#pragma once
#include "autograd/activation_checkpoint.hpp"
#include "autograd/dot.hpp"
#include "autograd/functional.hpp"
#include "autograd/gradcheck.hpp"
#include "autograd/kernels/parallel.hpp"
#include "autograd/memory.hpp"
#include "autograd/ops.hpp"
#include "autograd/tape.hpp"
#include "autograd/tensor.hpp"

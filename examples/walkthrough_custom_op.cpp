// examples/walkthrough_custom_op.cpp — adding an op: softplus with a hand-written backward
// and its differentiable form (examples/teaching.hpp, Note [Writing an op]), checked by
// gradcheck and gradgradcheck. Run: build/bin/walkthrough_custom_op
#include "teaching.hpp"

int main() { return tg::teaching::custom_op_demo() ? 0 : 1; }

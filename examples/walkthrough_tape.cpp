// examples/walkthrough_tape.cpp — a scalar expression, its tape, and its gradients.
// Run: build/bin/walkthrough_tape [tape.dot]   (with a path: the graph drawn too, autograd/dot.hpp)
#include "teaching.hpp"

int main(int argc, char** argv) {
  tg::teaching::scalar_tape_demo(std::cout, argc > 1 ? argv[1] : "");
  return 0;
}

// examples/walkthrough_tape.cpp — a scalar expression, its tape, and its gradients.
// Run: build/bin/walkthrough_tape
#include "teaching.hpp"

int main() {
  tg::teaching::scalar_tape_demo();
  return 0;
}

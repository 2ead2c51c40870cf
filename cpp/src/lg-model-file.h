// A base model GGUF checked for what llama.cpp accepts at load time and then asserts on (killing the process)
// when loraguard uses the model: the checks that are cheap on the metadata alone.
#pragma once

#include "lg-gguf.h"

namespace lg {

void check_model_file(const gguf_file & file);

}  // namespace lg

// Base-model fingerprint: identifies a model independently of its tensor types (docs/guard-format.md).
#pragma once

#include "lg-gguf.h"

#include <string>

namespace lg {

std::string base_fingerprint(const gguf_file & model);

}  // namespace lg

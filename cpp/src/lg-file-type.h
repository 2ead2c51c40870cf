// Short names of llama.cpp file types ("Q8_0", "Q4_K_M"), as users type them.
#pragma once

#include "llama.h"

#include <optional>
#include <string>

namespace lg {

std::string file_type_name(llama_ftype ftype);
std::optional<llama_ftype> file_type_from_name(const std::string & name);
std::string file_type_names();  // comma-separated, for error messages

}  // namespace lg

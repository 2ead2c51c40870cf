// Input text checks.
#pragma once

#include <string>
#include <string_view>

namespace lg {

// Fails with LG_ERR_INVALID_ARGUMENT, naming the field, on empty text, NUL bytes or invalid UTF-8.
void check_text(std::string_view text, const char * field);

}  // namespace lg

// Input text checks and guard templates.
#pragma once

#include <string>
#include <string_view>

namespace lg {

// Fails with LG_ERR_INVALID_ARGUMENT, naming the field, on empty text, NUL bytes or invalid UTF-8.
void check_text(std::string_view text, const char * field);

// Fills {prompt} and {response} in a template by plain replacement (placeholders in the inserted text are
// left alone).
std::string render_template(const std::string & tmpl, std::string_view prompt, std::string_view response);

}  // namespace lg

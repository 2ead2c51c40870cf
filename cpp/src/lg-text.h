// Input text checks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace lg {

// The code point starting at text[i], and its length in len; the text is valid UTF-8 (checked before).
uint32_t decode_valid_utf8(std::string_view text, size_t i, size_t & len);

// Appends a code point as UTF-8; false (nothing appended) for surrogates and values past U+10FFFF, which no text
// holds.
bool append_utf8(std::string & out, uint32_t cp);

// Offset of the first byte that is not part of a well-formed UTF-8 sequence, or npos.
size_t invalid_utf8_offset(std::string_view s);

// Fails with LG_ERR_INVALID_ARGUMENT, naming the field, on NUL bytes or invalid UTF-8.
void check_encoding(std::string_view text, const char * field);

// check_encoding, and fails on empty text too.
void check_text(std::string_view text, const char * field);

}  // namespace lg

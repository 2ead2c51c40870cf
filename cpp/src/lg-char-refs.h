// HTML's character references, read by the decoders (runs of them spelling words) and by folding (one put inside a
// word).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace lg {

struct char_reference {
    size_t end;  // past the ';'
    uint32_t code_point;
};

// The character reference at text[i], or nothing: a numeric one, decimal or hex ("&#111;", "&#x6F;", any number of
// leading zeros, a code point up to U+10FFFF but a surrogate) or a named one of a character drawn as nothing ("&shy;",
// "&zwj;", "&ZeroWidthSpace;", ...; HTML's names are case-sensitive). The ';' is required: browsers read a few
// references without it, but a text that means an ampersand and digits writes them so.
std::optional<char_reference> html_reference_at(std::string_view text, size_t i);

}  // namespace lg

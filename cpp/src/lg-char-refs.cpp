#include "lg-char-refs.h"

#include "lg-decode.h"

#include <algorithm>
#include <iterator>

namespace lg {
namespace {

// A reference's digits, leading zeros included, are no more than this: past it the '&' starts no reference, so a
// run of digits is scanned once.
constexpr size_t k_max_reference_digits = 32;

struct named_reference {
    std::string_view name;
    uint32_t code_point;
};

// HTML's names for the default-ignorable characters folding removes: a reference to one inside a word is what a
// browser draws as the word alone. Names of visible characters are not read: "AT&amp;T" means what it says.
constexpr named_reference k_invisible_names[] = {
    {"shy", 0x00AD},                   {"ZeroWidthSpace", 0x200B},     {"NegativeVeryThinSpace", 0x200B},
    {"NegativeThinSpace", 0x200B},     {"NegativeMediumSpace", 0x200B}, {"NegativeThickSpace", 0x200B},
    {"zwnj", 0x200C},                  {"zwj", 0x200D},                {"lrm", 0x200E},
    {"rlm", 0x200F},                   {"NoBreak", 0x2060},            {"af", 0x2061},
    {"ApplyFunction", 0x2061},         {"it", 0x2062},                 {"InvisibleTimes", 0x2062},
    {"ic", 0x2063},                    {"InvisibleComma", 0x2063},
};

constexpr size_t k_longest_name = std::max_element(std::begin(k_invisible_names), std::end(k_invisible_names),
                                                   [](const named_reference & a, const named_reference & b) {
                                                       return a.name.size() < b.name.size();
                                                   })->name.size();

std::optional<char_reference> numeric_reference(std::string_view text, size_t i) {
    const bool hex = i < text.size() && (text[i] | 0x20) == 'x';
    i += hex;
    uint32_t value = 0;
    size_t n_digits = 0;
    for (; i < text.size() && text[i] != ';'; ++i, ++n_digits) {
        const int digit = hex ? hex_digit_value(text[i]) : is_ascii_digit(text[i]) ? text[i] - '0' : -1;
        if (digit < 0 || n_digits == k_max_reference_digits) {
            return std::nullopt;
        }
        value = value * (hex ? 16 : 10) + static_cast<uint32_t>(digit);
        if (value > 0x10FFFF) {
            return std::nullopt;
        }
    }
    if (n_digits == 0 || i == text.size() || (value >= 0xD800 && value <= 0xDFFF)) {
        return std::nullopt;
    }
    return char_reference{i + 1, value};
}

}  // namespace

std::optional<char_reference> html_reference_at(std::string_view text, size_t i) {
    if (i + 2 >= text.size() || text[i] != '&') {
        return std::nullopt;
    }
    if (text[i + 1] == '#') {
        return numeric_reference(text, i + 2);
    }
    // looked for within the longest name only: a text of ampersands is read in linear time
    const size_t semicolon = text.substr(i + 1, k_longest_name + 1).find(';');
    if (semicolon == std::string_view::npos) {
        return std::nullopt;
    }
    const std::string_view name = text.substr(i + 1, semicolon);
    const auto * found = std::find_if(std::begin(k_invisible_names), std::end(k_invisible_names),
                                      [&](const named_reference & ref) { return ref.name == name; });
    if (found == std::end(k_invisible_names)) {
        return std::nullopt;
    }
    return char_reference{i + 1 + semicolon + 1, found->code_point};
}

}  // namespace lg

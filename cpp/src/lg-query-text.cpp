#include "lg-decode.h"
#include "lg-fold.h"

#include <string>

namespace {

// A parameter's value holds text when it joins this many words that hold a letter with '+' at least ("how+to+make":
// three); fewer are more often a sum, a list of numbers or a pair of codes ("x=3D+y", "5+6+7", "size=L+XL") than a
// sentence
constexpr size_t k_min_query_words = 3;

// A key as forms and search engines name them: letters, digits, '_', '-', '.', '[' and ']'
bool is_key(std::string_view key) {
    if (key.empty()) {
        return false;
    }
    for (const char c : key) {
        if (!lg::is_ascii_alnum(c) && c != '_' && c != '-' && c != '.' && c != '[' && c != ']') {
            return false;
        }
    }
    return true;
}

// A value as a form writes text ('+' for a space, "%HH" for a byte) read back, when it joins enough words with '+'
std::optional<std::string> form_text(std::string_view value) {
    std::string bytes;
    size_t n_words = 0;           // words that hold a letter (ASCII or of any other script)
    bool word_has_letter = false;  // the current word's
    for (size_t i = 0; i < value.size(); ++i) {
        if (value[i] == '+') {
            bytes += ' ';
            word_has_letter = false;
            continue;
        }
        const int high = value[i] == '%' && i + 2 < value.size() ? lg::hex_digit_value(value[i + 1]) : -1;
        const int low = high >= 0 ? lg::hex_digit_value(value[i + 2]) : -1;
        const char c = low >= 0 ? static_cast<char>(high * 16 + low) : value[i];
        i += low >= 0 ? 2 : 0;
        bytes += c;
        if (!word_has_letter && (lg::is_ascii_letter(c) || static_cast<unsigned char>(c) >= 0x80)) {
            word_has_letter = true;
            ++n_words;
        }
    }
    if (n_words < k_min_query_words || !lg::reads_as_text(bytes)) {
        return std::nullopt;
    }
    return bytes;
}

// The text a word (between spaces) holds in its query, if it is a URL or a query string: the values of its
// parameters that are form-written text, in order, a space apart
std::optional<std::string> query_text(std::string_view word) {
    const size_t question = word.find('?');
    std::string_view query = question == std::string_view::npos ? word : word.substr(question + 1);
    query = query.substr(0, query.find('#'));
    std::string read;
    while (!query.empty()) {
        const size_t amp = query.find('&');
        const std::string_view parameter = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
        const size_t eq = parameter.find('=');
        if (eq == std::string_view::npos || !is_key(parameter.substr(0, eq))) {
            continue;
        }
        if (std::optional<std::string> text = form_text(parameter.substr(eq + 1))) {
            read += read.empty() ? "" : " ";
            read += *text;
        }
    }
    if (read.empty()) {
        return std::nullopt;
    }
    return lg::fold_text(read);
}

}  // namespace

namespace lg {

std::optional<std::string> read_query_text(std::string_view text) {
    return replace_runs(text, [](std::string_view text, size_t i) -> run_reading {
        if (is_ascii_space(text[i])) {
            return {i + 1, std::nullopt};
        }
        size_t end = i;
        while (end < text.size() && !is_ascii_space(text[end])) {
            ++end;
        }
        return {end, query_text(text.substr(i, end - i))};
    });
}

}  // namespace lg

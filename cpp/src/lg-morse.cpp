#include "lg-decode.h"

#include <array>
#include <utility>

namespace {

// Fewer characters are more often a dotted or dashed line, "- - -" bullets or "... --" than a message
constexpr size_t k_min_morse_chars = 5;
// The longest code in the table below ("..--.." is six symbols)
constexpr size_t k_max_morse_code = 6;

constexpr std::array<std::pair<std::string_view, char>, 41> k_morse = {{
    {".-", 'a'},     {"-...", 'b'},   {"-.-.", 'c'},   {"-..", 'd'},    {".", 'e'},      {"..-.", 'f'},
    {"--.", 'g'},    {"....", 'h'},   {"..", 'i'},     {".---", 'j'},   {"-.-", 'k'},    {".-..", 'l'},
    {"--", 'm'},     {"-.", 'n'},     {"---", 'o'},    {".--.", 'p'},   {"--.-", 'q'},   {".-.", 'r'},
    {"...", 's'},    {"-", 't'},      {"..-", 'u'},    {"...-", 'v'},   {".--", 'w'},    {"-..-", 'x'},
    {"-.--", 'y'},   {"--..", 'z'},   {"-----", '0'},  {".----", '1'},  {"..---", '2'},  {"...--", '3'},
    {"....-", '4'},  {".....", '5'},  {"-....", '6'},  {"--...", '7'},  {"---..", '8'},  {"----.", '9'},
    {".-.-.-", '.'}, {"--..--", ','}, {"..--..", '?'}, {".----.", '\''}, {"-.-.--", '!'},
}};

char morse_char(std::string_view code) {
    for (const auto & [c, ch] : k_morse) {
        if (c == code) {
            return ch;
        }
    }
    return 0;
}

// The Morse symbol at text[i]: '.' or '-' and the length of its bytes there, or 0. Besides ASCII, a writer's dots
// (middle dot, bullet, dot operators) and dashes (underscore, en and em dashes, minus sign) read the same.
char morse_symbol(std::string_view text, size_t i, size_t & n_bytes) {
    n_bytes = 1;
    const char c = text[i];
    if (c == '.' || c == '-' || c == '_') {
        return c == '.' ? '.' : '-';
    }
    const std::string_view rest = text.substr(i);
    static constexpr std::array<std::pair<std::string_view, char>, 7> k_wide = {{
        {"\u00B7", '.'}, {"\u2022", '.'}, {"\u2219", '.'}, {"\u22C5", '.'},
        {"\u2013", '-'}, {"\u2014", '-'}, {"\u2212", '-'},
    }};
    for (const auto & [bytes, symbol] : k_wide) {
        if (rest.substr(0, bytes.size()) == bytes) {
            n_bytes = bytes.size();
            return symbol;
        }
    }
    return 0;
}

// Reads the Morse run starting at text[begin] (a symbol): codes of dots and dashes, one space between the codes of a
// word, '/' or '|' (spaces around them allowed) or two spaces or more between words. A line break ends it. The run
// ends one past its last symbol; it decodes when every code spells a character, it spells enough of them, and it
// uses both symbols.
lg::run_reading read_morse_run(std::string_view text, size_t begin) {
    lg::run_reading run{begin, std::nullopt};
    std::string decoded;
    std::string code;
    bool dots = false;
    bool dashes = false;
    size_t n_chars = 0;
    bool word_gap = false;
    bool valid = true;
    auto finish_code = [&]() {
        const char ch = code.size() <= k_max_morse_code ? morse_char(code) : 0;
        valid = valid && ch != 0;
        if (word_gap && n_chars > 0) {
            decoded += ' ';
        }
        decoded += ch;
        ++n_chars;
        word_gap = false;
        code.clear();
    };
    size_t i = begin;
    while (i < text.size()) {
        size_t n_bytes = 0;
        if (const char symbol = morse_symbol(text, i, n_bytes)) {
            code += symbol;
            dots = dots || symbol == '.';
            dashes = dashes || symbol == '-';
            i += n_bytes;
            run.end = i;
            continue;
        }
        // a gap: spaces, then maybe a '/' or '|' and more spaces, then the next code
        size_t j = i;
        size_t n_spaces = 0;
        bool slash = false;  // one '/' or '|' at most
        for (; j < text.size(); ++j) {
            const bool space = text[j] == ' ' || text[j] == '\t';
            const bool word_mark = text[j] == '/' || text[j] == '|';
            if (!space && (!word_mark || slash)) {
                break;
            }
            slash = slash || word_mark;
            n_spaces += space;
        }
        size_t next_bytes = 0;
        if (j == i || j >= text.size() || !morse_symbol(text, j, next_bytes)) {
            break;
        }
        finish_code();
        word_gap = slash || n_spaces >= 2;
        i = j;
    }
    if (!code.empty()) {
        finish_code();
    }
    const bool ends_word = run.end == text.size() || !lg::is_ascii_alnum(text[run.end]);
    if (valid && ends_word && dots && dashes && n_chars >= k_min_morse_chars) {
        run.replacement = std::move(decoded);
    }
    return run;
}

}  // namespace

namespace lg {

std::optional<std::string> decode_morse_runs(std::string_view text) {
    return replace_runs(text, [](std::string_view text, size_t i) -> run_reading {
        size_t n_bytes = 0;
        const bool starts_word = i == 0 || !lg::is_ascii_alnum(text[i - 1]);
        if (!morse_symbol(text, i, n_bytes) || !starts_word) {
            return {i + n_bytes, std::nullopt};
        }
        return read_morse_run(text, i);
    });
}

}  // namespace lg

#include "lg-decode.h"

#include "lg-char-refs.h"
#include "lg-fold.h"
#include "lg-text.h"

#include <algorithm>
#include <cctype>
#include <cstdint>

namespace {

// Fewer bytes are more often an ID, a colour or a short hash than a message
constexpr size_t k_min_hex_bytes = 8;
// Escapes and codes set apart one by one are written on purpose; a few still say little ("\x1b[0m" is a colour)
constexpr size_t k_min_spelled_chars = 4;

// The value of the n hex digits at text[i], or -1
int64_t hex_number(std::string_view text, size_t i, size_t n) {
    if (i + n > text.size()) {
        return -1;
    }
    int64_t value = 0;
    for (size_t k = i; k < i + n; ++k) {
        const int digit = lg::hex_digit_value(text[k]);
        if (digit < 0) {
            return -1;
        }
        value = value * 16 + digit;
    }
    return value;
}

// The hex digits a backslash escape of this form takes: \xHH (a byte), \uHHHH, \UHHHHHHHH; 0 for no such escape
size_t backslash_escape_digits(char form) { return form == 'x' ? 2 : form == 'u' ? 4 : form == 'U' ? 8 : 0; }

// What a run spelled, kept when it reads as text (as base64's must)
lg::run_reading spelled(size_t end, const std::string & bytes, size_t n_chars, size_t min_chars, bool valid = true) {
    if (!valid || n_chars < min_chars || !lg::reads_as_text(bytes)) {
        return {end, std::nullopt};
    }
    return {end, lg::fold_text(bytes)};
}

// A run of escapes, one after another: \xHH (a byte), \uHHHH (a UTF-16 unit; surrogate pairs join) or \UHHHHHHHH
lg::run_reading read_backslash_escapes(std::string_view text, size_t begin) {
    std::string bytes;  // the \x bytes and the code points, in order, as UTF-8
    size_t n_chars = 0;
    bool valid = true;
    uint32_t high_surrogate = 0;
    size_t i = begin;
    while (i + 1 < text.size() && text[i] == '\\') {
        const char kind = text[i + 1];
        const size_t n_digits = backslash_escape_digits(kind);
        const int64_t value = n_digits ? hex_number(text, i + 2, n_digits) : -1;
        if (value < 0) {
            break;
        }
        i += 2 + n_digits;
        ++n_chars;
        if (kind == 'x') {
            valid = valid && !high_surrogate;  // a surrogate pair is two \u escapes in a row
            bytes += static_cast<char>(value);
            continue;
        }
        auto cp = static_cast<uint32_t>(value);
        if (cp >= 0xD800 && cp <= 0xDBFF && kind == 'u' && !high_surrogate) {
            high_surrogate = cp;
            continue;
        }
        if (high_surrogate) {
            valid = valid && cp >= 0xDC00 && cp <= 0xDFFF;
            cp = 0x10000 + ((high_surrogate - 0xD800) << 10) + (cp - 0xDC00);
            high_surrogate = 0;
        }
        valid = lg::append_utf8(bytes, cp) && valid;
    }
    if (i == begin) {
        return {begin + 1, std::nullopt};
    }
    return spelled(i, bytes, n_chars, k_min_spelled_chars, valid && !high_surrogate);
}

// A run of percent-encoded bytes: %HH%HH...
lg::run_reading read_percent_escapes(std::string_view text, size_t begin) {
    std::string bytes;
    size_t i = begin;
    while (i < text.size() && text[i] == '%') {
        const int64_t value = hex_number(text, i + 1, 2);
        if (value < 0) {
            break;
        }
        bytes += static_cast<char>(value);
        i += 3;
    }
    if (i == begin) {
        return {begin + 1, std::nullopt};
    }
    return spelled(i, bytes, bytes.size(), k_min_spelled_chars);
}

// A word written with escapes among its plain characters: URL encoding ("How%20do%20I%20make%3F") or MIME's
// quoted-printable ("How=20do=20I=20make?", upper-case digits, "=" at a line's end joining it to the next line). A
// word is so when it holds at least two escapes of one kind; all of that kind are read, and the word is kept when
// what it says reads as text.
lg::run_reading read_escaped_word(std::string_view text, size_t begin) {
    // quoted-printable's "=" before a line break stands for no character: the length of that break, or 0
    const auto soft_break = [&](size_t k) -> size_t {
        if (text[k] != '=') {
            return 0;
        }
        return text.substr(k + 1, 1) == "\n" ? 2 : text.substr(k + 1, 2) == "\r\n" ? 3 : 0;
    };
    const auto escaped = [&](size_t k, char escape) {
        if (text[k] != escape || hex_number(text, k + 1, 2) < 0) {
            return false;
        }
        return escape == '%' || !(std::islower(static_cast<unsigned char>(text[k + 1])) ||
                                  std::islower(static_cast<unsigned char>(text[k + 2])));
    };
    size_t end = begin;
    size_t n_percent = 0;
    size_t n_quoted = 0;
    while (end < text.size() && !lg::is_ascii_space(text[end])) {
        if (const size_t n = soft_break(end)) {
            end += n;
            continue;
        }
        n_percent += escaped(end, '%');
        n_quoted += escaped(end, '=');
        ++end;
    }
    if (std::max(n_percent, n_quoted) < 2) {
        return {begin + 1, std::nullopt};
    }
    const char escape = n_percent >= n_quoted ? '%' : '=';
    std::string bytes;
    for (size_t k = begin; k < end;) {
        const size_t n = escape == '=' ? soft_break(k) : 0;
        if (n > 0) {
            k += n;
        } else if (escaped(k, escape)) {
            bytes += static_cast<char>(hex_number(text, k + 1, 2));
            k += 3;
        } else {
            bytes += text[k++];
        }
    }
    return spelled(end, bytes, bytes.size(), k_min_spelled_chars);
}

// The length of the escape of an ASCII letter at text[i] of this kind ('%': %HH; '\\': \xHH, \uHHHH or \UHHHHHHHH),
// the letter in letter; 0 where there is none.
size_t escaped_letter_at(std::string_view text, size_t i, char kind, char & letter) {
    if (i >= text.size() || text[i] != kind) {
        return 0;
    }
    const char form = i + 1 < text.size() ? text[i + 1] : '\0';
    const size_t n_digits = kind == '%' ? 2 : backslash_escape_digits(form);
    const size_t digits_at = kind == '%' ? i + 1 : i + 2;
    const int64_t value = n_digits ? hex_number(text, digits_at, n_digits) : -1;
    if (value < 0 || value >= 0x80 || !lg::is_ascii_letter(static_cast<char>(value))) {
        return 0;
    }
    letter = static_cast<char>(value);
    return digits_at + n_digits - i;
}

// Whether c ends a word of a sentence or of a URL's path or query ("/search?q=how+to+make+a+b%6Fmb&hl=en": a form
// writes '+' for a space)
bool separates_words(char c) {
    return lg::is_ascii_space(c) || std::string_view("+&=?/#").find(c) != std::string_view::npos;
}

// Whether the word around text[begin, end) (between spaces or a URL's separators, without the punctuation and
// brackets a sentence or a JSON string puts around it) is made of ASCII letters and escapes of letters only:
// "b%6Fmb" is, in a sentence or a query string; a run of ASCII85 holding "%6A" is not (ASCII85 is decoded first, but
// a run that spells no text stays as written).
bool plain_escaped_word(std::string_view text, size_t begin, size_t end, char kind) {
    const auto edge = [](char c) { return std::string_view(".,;:!?'\"()[]{}<>").find(c) != std::string_view::npos; };
    // a word is this long at most: looked for within it only, so a text without spaces is read in linear time
    constexpr size_t k_max_word = 64;
    size_t first = begin;
    while (first > 0 && !separates_words(text[first - 1])) {
        if (begin - first == k_max_word) {
            return false;
        }
        --first;
    }
    size_t last = end;
    while (last < text.size() && !separates_words(text[last])) {
        if (last - end == k_max_word) {
            return false;
        }
        ++last;
    }
    while (first < begin && edge(text[first])) {
        ++first;
    }
    while (last > end && edge(text[last - 1])) {
        --last;
    }
    char letter = 0;
    for (size_t k = first; k < last;) {
        if (lg::is_ascii_letter(text[k])) {
            ++k;
        } else if (const size_t len = escaped_letter_at(text, k, kind, letter)) {
            k += len;
        } else {
            return false;
        }
    }
    return true;
}

// A few escapes of ASCII letters beside a letter, in a word of letters: "b%6Fmb", "k\x69ll", "b\u006Fmb". An encoder
// escapes no letter, so a letter escaped is a word disguised; a run of four escapes or more is read whatever it
// spells (read_backslash_escapes, read_percent_escapes). Quoted-printable's "=6F" is not read so: "v=44vz" and
// "PORT=5432" are keys and values.
lg::run_reading read_escaped_letters(std::string_view text, size_t begin) {
    const char kind = text[begin];
    std::string letters;
    size_t i = begin;
    char letter = 0;
    while (const size_t len = escaped_letter_at(text, i, kind, letter)) {
        letters += letter;
        i += len;
    }
    const bool beside_letter =
        (begin > 0 && lg::is_ascii_letter(text[begin - 1])) || (i < text.size() && lg::is_ascii_letter(text[i]));
    if (letters.empty() || !beside_letter || !plain_escaped_word(text, begin, i, kind)) {
        return {std::max(i, begin + 1), std::nullopt};
    }
    return {i, std::move(letters)};
}

// A run of HTML character references: &#104;&#111; or &#x68;&#x6f; (lg-char-refs.h). Scraped text holds runs of
// emoji so written ("&#128514;&#128514;"), which are no message: the run must spell ASCII letters.
lg::run_reading read_html_entities(std::string_view text, size_t begin) {
    std::string bytes;
    size_t n_chars = 0;
    size_t n_letters = 0;
    size_t i = begin;
    while (const std::optional<lg::char_reference> ref = lg::html_reference_at(text, i)) {
        lg::append_utf8(bytes, ref->code_point);
        n_letters += ref->code_point < 0x80 && lg::is_ascii_letter(static_cast<char>(ref->code_point));
        ++n_chars;
        i = ref->end;
    }
    if (i == begin) {
        return {begin + 1, std::nullopt};
    }
    return spelled(i, bytes, n_chars, k_min_spelled_chars, n_letters >= k_min_spelled_chars);
}

bool is_hex_run(std::string_view run) { return std::all_of(run.begin(), run.end(), lg::is_ascii_hex_digit); }

// A word without its "0x"
std::string_view without_0x(std::string_view word) {
    return word.size() > 2 && word[0] == '0' && (word[1] | 0x20) == 'x' ? word.substr(2) : word;
}

bool is_binary_run(std::string_view run) { return run.find_first_not_of("01") == std::string_view::npos; }

// The bytes of a run of hex digits (an even number) or binary digits (a multiple of eight)
std::string digits_to_bytes(std::string_view run, bool binary) {
    std::string bytes;
    const size_t width = binary ? 8 : 2;
    for (size_t i = 0; i + width <= run.size(); i += width) {
        int value = 0;
        for (size_t k = i; k < i + width; ++k) {
            value = binary ? value * 2 + (run[k] - '0') : value * 16 + lg::hex_digit_value(run[k]);
        }
        bytes += static_cast<char>(value);
    }
    return bytes;
}

// A code set apart from the next by one space or a comma (and a space): "68 6f 77", "0x68, 0x6f", "01101000 01101111"
size_t next_code(std::string_view text, size_t end) {
    if (end < text.size() && text[end] == ',') {
        ++end;
    }
    if (end < text.size() && text[end] == ' ') {
        ++end;
    }
    return end;
}

size_t alnum_end(std::string_view text, size_t i) {
    while (i < text.size() && lg::is_ascii_alnum(text[i])) {
        ++i;
    }
    return i;
}

// Codes one by one, each a word of its own: two hex digits (0x allowed) or eight binary digits
lg::run_reading read_separate_codes(std::string_view text, size_t begin) {
    const auto code_of = [&](size_t i, size_t end, bool & binary) -> std::string_view {
        std::string_view word = text.substr(i, end - i);
        word = word.size() == 4 ? without_0x(word) : word;  // "0x68"; "0x" and eight binary digits is no code
        binary = word.size() == 8 && is_binary_run(word);
        return binary || (word.size() == 2 && is_hex_run(word)) ? word : std::string_view();
    };
    bool binary = false;
    size_t end = alnum_end(text, begin);
    std::string_view code = code_of(begin, end, binary);
    if (code.empty()) {
        return {end, std::nullopt};
    }
    const bool run_binary = binary;
    std::string digits;
    size_t run_end = end;
    while (!code.empty() && binary == run_binary) {
        digits += code;
        run_end = end;
        const size_t next = next_code(text, end);
        if (next == end || next >= text.size() || !lg::is_ascii_alnum(text[next])) {
            break;
        }
        end = alnum_end(text, next);
        code = code_of(next, end, binary);
    }
    const std::string bytes = digits_to_bytes(digits, run_binary);
    return spelled(run_end, bytes, bytes.size(), run_binary ? k_min_spelled_chars : k_min_hex_bytes);
}

// Decimal character codes, each a word of its own, set apart as separate codes are ("104 111 119 32 116 111"): at
// least k_min_hex_bytes of them, every one printable ASCII or a tab or line break, one of them a space. Lists of
// numbers are common and now and then all between 32 and 126 ("65 70 72 80 ..."): a space among them is what tells
// a message, as in every encoder's output.
lg::run_reading read_decimal_codes(std::string_view text, size_t begin) {
    std::string bytes;
    size_t run_end = begin;
    for (size_t i = begin; i < text.size() && lg::is_ascii_digit(text[i]);) {
        const size_t end = alnum_end(text, i);
        int value = 0;
        for (size_t k = i; k < end && value < 1000; ++k) {
            value = lg::is_ascii_digit(text[k]) ? value * 10 + (text[k] - '0') : 1000;
        }
        const bool printable = (value >= 32 && value <= 126) || value == '\t' || value == '\n' || value == '\r';
        if (end - i > 3 || !printable) {
            break;
        }
        bytes += static_cast<char>(value);
        run_end = end;
        const size_t next = next_code(text, end);
        if (next == end) {
            break;
        }
        i = next;
    }
    const bool message = bytes.find(' ') != std::string::npos;
    return spelled(run_end, bytes, bytes.size(), k_min_hex_bytes, message);
}

// Whether the word at text[i] follows a decimal code as the next code of its run ("104 111": 111 does)
bool follows_decimal_code(std::string_view text, size_t i) {
    size_t j = i;
    if (j > 0 && text[j - 1] == ' ') {
        --j;
    }
    if (j > 0 && text[j - 1] == ',') {
        --j;
    }
    return j < i && j > 0 && lg::is_ascii_digit(text[j - 1]);
}

// One word of hex digits (0x allowed, an even number of them) or binary digits (a multiple of eight)
lg::run_reading read_digits_word(std::string_view text, size_t begin, size_t end) {
    const std::string_view word = without_0x(text.substr(begin, end - begin));
    const bool binary = word.size() % 8 == 0 && is_binary_run(word);
    if (!binary && (word.size() % 2 != 0 || !is_hex_run(word))) {
        return {end, std::nullopt};
    }
    const std::string bytes = digits_to_bytes(word, binary);
    return spelled(end, bytes, bytes.size(), binary ? k_min_spelled_chars : k_min_hex_bytes);
}

}  // namespace

namespace lg {

std::optional<std::string> decode_char_code_runs(std::string_view text) {
    return replace_runs(text, [](std::string_view text, size_t i) -> run_reading {
        if (i == 0 || is_ascii_space(text[i - 1])) {
            if (run_reading word = read_escaped_word(text, i); word.replacement) {
                return word;
            }
        }
        if (text[i] == '\\' || text[i] == '%') {
            run_reading run = text[i] == '\\' ? read_backslash_escapes(text, i) : read_percent_escapes(text, i);
            if (run.replacement) {
                return run;
            }
            // read past the whole run either way: a long run of escapes is read once (linear time)
            run_reading letters = read_escaped_letters(text, i);
            return letters.replacement ? letters : run;
        }
        if (text[i] == '&') {
            return read_html_entities(text, i);
        }
        if (!is_ascii_alnum(text[i]) || (i > 0 && is_ascii_alnum(text[i - 1]))) {
            return {i + 1, std::nullopt};
        }
        const size_t end = alnum_end(text, i);
        if (run_reading one_word = read_digits_word(text, i, end); one_word.replacement) {
            return one_word;
        }
        run_reading codes = read_separate_codes(text, i);
        // a run of decimal codes is read from its first code only, so that each is read once (linear time)
        if (!codes.replacement && is_ascii_digit(text[i]) && !follows_decimal_code(text, i)) {
            if (run_reading decimal = read_decimal_codes(text, i); decimal.replacement) {
                return decimal;
            }
        }
        return codes;
    });
}

}  // namespace lg

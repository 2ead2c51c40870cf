#include "lg-decode.h"

#include <vector>

namespace {

using lg::is_ascii_digit;
using lg::is_ascii_hex_digit;
using lg::is_ascii_letter;
using lg::is_ascii_upper;

// The letter c stands for in leetspeak, 0 for none
char leet_letter(char c) {
    switch (c) {
        case '0': return 'o';
        case '1': return 'i';
        case '3': return 'e';
        case '4': return 'a';
        case '5': return 's';
        case '7': return 't';
        case '@': return 'a';
        case '$': return 's';
        default: return 0;
    }
}

bool in_word(char c) { return is_ascii_letter(c) || is_ascii_digit(c) || c == '@' || c == '$'; }

struct word {
    size_t begin;
    size_t end;
    bool upper;  // its letters are all capitals: read its digits as capitals too
};

// Letters as a word has them (all small, all capitals, or a capital and small ones), not a code's mix.
bool word_case(std::string_view w, bool & upper) {
    size_t n = 0;
    size_t n_upper = 0;
    bool first_upper = false;
    for (const char c : w) {
        if (is_ascii_letter(c)) {
            first_upper = n == 0 ? is_ascii_upper(c) : first_upper;
            ++n;
            n_upper += is_ascii_upper(c);
        }
    }
    upper = n > 0 && n_upper == n;
    return n_upper == 0 || upper || (first_upper && n_upper == 1);
}

// A hexadecimal number (a hash, an id, a colour): "8e067e4c" is a code, not leetspeak for "8eoteac"
bool is_hex_code(std::string_view w) {
    if (w.size() < 8) {
        return false;
    }
    for (const char c : w) {
        if (!is_ascii_hex_digit(c)) {
            return false;
        }
    }
    return true;
}

// A run of leet characters, one of them a digit, with a letter on each side
bool has_leet_letters(std::string_view w) {
    for (size_t i = 1; i + 1 < w.size(); ++i) {
        if (!is_ascii_letter(w[i - 1]) || !leet_letter(w[i])) {
            continue;
        }
        size_t j = i;
        bool digit = false;
        while (j < w.size() && leet_letter(w[j])) {
            digit = digit || is_ascii_digit(w[j]);
            ++j;
        }
        if (digit && j < w.size() && is_ascii_letter(w[j])) {
            return true;
        }
        i = j - 1;
    }
    return false;
}

}  // namespace

namespace lg {

std::optional<std::string> read_leetspeak(std::string_view text) {
    std::vector<word> words;  // the words that may be read as leetspeak
    bool leet = false;
    for (size_t chunk = 0; chunk < text.size();) {
        if (lg::is_ascii_space(text[chunk])) {
            ++chunk;
            continue;
        }
        size_t chunk_end = chunk;
        while (chunk_end < text.size() && !lg::is_ascii_space(text[chunk_end])) {
            ++chunk_end;
        }
        const std::string_view piece = text.substr(chunk, chunk_end - chunk);
        const size_t at = piece.find('@');
        const bool address = at == 0 || piece.find('/') != std::string_view::npos ||
                             (at != std::string_view::npos && piece.find('.', at) != std::string_view::npos);
        for (size_t i = chunk; !address && i < chunk_end;) {
            if (!in_word(text[i])) {
                ++i;
                continue;
            }
            size_t end = i;
            while (end < chunk_end && in_word(text[end])) {
                ++end;
            }
            const std::string_view w = text.substr(i, end - i);
            bool upper = false;
            // an escape's code ("\u00e9", "\x1b") is no word
            const bool escape = i > 0 && text[i - 1] == '\\';
            if (w.front() != '@' && !escape && word_case(w, upper) && !is_hex_code(w)) {
                words.push_back({i, end, upper});
                leet = leet || has_leet_letters(w);
            }
            i = end;
        }
        chunk = chunk_end;
    }
    if (!leet) {
        return std::nullopt;
    }
    std::string out(text);
    for (const word & w : words) {
        for (size_t i = w.begin; i < w.end; ++i) {
            const char letter = leet_letter(out[i]);
            if (!letter || (out[i] == '$' && i + 1 < w.end && is_ascii_digit(out[i + 1]))) {
                continue;  // $5 is money
            }
            out[i] = w.upper ? static_cast<char>(letter - 'a' + 'A') : letter;
        }
    }
    return out;
}

}  // namespace lg

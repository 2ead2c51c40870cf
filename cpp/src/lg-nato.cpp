#include "lg-decode.h"

#include <algorithm>

namespace {

// The ICAO/NATO spelling alphabet, with the spellings writers use beside the official ones
struct code_word {
    std::string_view word;
    char letter;
};
constexpr code_word k_code_words[] = {
    {"alfa", 'a'},    {"alpha", 'a'},   {"bravo", 'b'},   {"charlie", 'c'},  {"delta", 'd'},   {"echo", 'e'},
    {"foxtrot", 'f'}, {"golf", 'g'},    {"hotel", 'h'},   {"india", 'i'},    {"juliet", 'j'},  {"juliett", 'j'},
    {"kilo", 'k'},    {"lima", 'l'},    {"mike", 'm'},    {"november", 'n'}, {"oscar", 'o'},   {"papa", 'p'},
    {"quebec", 'q'},  {"romeo", 'r'},   {"sierra", 's'},  {"tango", 't'},    {"uniform", 'u'}, {"victor", 'v'},
    {"whiskey", 'w'}, {"whisky", 'w'},  {"x-ray", 'x'},   {"xray", 'x'},     {"yankee", 'y'},  {"zulu", 'z'},
};

// Fewer code words are as often a radio call or a list ("Alpha, Bravo") as a message
constexpr size_t k_min_code_words = 4;

// The letter of the code word at text[i, end), its end in end, or '\0'
char letter_at(std::string_view text, size_t i, size_t & end) {
    end = i;
    while (end < text.size() && (lg::is_ascii_letter(text[end]) || (text[end] == '-' && end > i))) {
        ++end;
    }
    // the code words are 4 to 8 letters long: other words are not lower-cased and looked up
    if ((end < text.size() && lg::is_ascii_alnum(text[end])) || end - i < 4 || end - i > 8) {
        return '\0';
    }
    std::string lower(text.substr(i, end - i));
    std::transform(lower.begin(), lower.end(), lower.begin(), lg::to_ascii_lower);
    for (const code_word & c : k_code_words) {
        if (c.word == lower) {
            return c.letter;
        }
    }
    return '\0';
}

// A word break between code words: " / ", " | " or two spaces or more; end receives where the next code word starts
// (after one space when there is no break)
bool word_break(std::string_view text, size_t i, size_t & end) {
    size_t j = i;
    while (j < text.size() && text[j] == ' ') {
        ++j;
    }
    if (j < text.size() && (text[j] == '/' || text[j] == '|')) {
        ++j;
        while (j < text.size() && text[j] == ' ') {
            ++j;
        }
        end = j;
        return true;
    }
    end = j;
    return j - i >= 2;
}

}  // namespace

namespace lg {

std::optional<std::string> decode_nato_runs(std::string_view text) {
    return replace_runs(text, [](std::string_view text, size_t i) -> run_reading {
        size_t end = i;
        if ((i > 0 && is_ascii_alnum(text[i - 1])) || letter_at(text, i, end) == '\0') {
            return {std::max(end, i + 1), std::nullopt};
        }
        std::string out;
        size_t n_words = 0;
        size_t run_end = i;
        for (size_t k = i;;) {
            size_t word_end = k;
            const char letter = letter_at(text, k, word_end);
            if (letter == '\0') {
                break;
            }
            out += letter;
            ++n_words;
            run_end = word_end;
            size_t next = word_end;
            const bool breaks = word_break(text, word_end, next);
            if (next == word_end || next >= text.size()) {
                break;
            }
            size_t after = next;
            if (letter_at(text, next, after) == '\0') {
                break;
            }
            if (breaks) {
                out += ' ';
            }
            k = next;
        }
        if (n_words < k_min_code_words) {
            return {run_end, std::nullopt};
        }
        return {run_end, out};
    });
}

}  // namespace lg

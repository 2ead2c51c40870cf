#include "lg-decode.h"
#include "lg-text.h"

#include <cstdint>

namespace {

// Braille cells are U+2800 plus their raised dots as bits (dot 1 = 1, dot 2 = 2, dot 3 = 4, dot 4 = 8, dot 5 = 16,
// dot 6 = 32). English braille, grade 1: the letters, and the signs for a capital, a number and punctuation.
constexpr uint8_t k_letter_cells[26] = {
    0x01, 0x03, 0x09, 0x19, 0x11, 0x0B, 0x1B, 0x13, 0x0A, 0x1A, 0x05, 0x07, 0x0D,
    0x1D, 0x15, 0x0F, 0x1F, 0x17, 0x0E, 0x1E, 0x25, 0x27, 0x3A, 0x2D, 0x3D, 0x35,
};
constexpr uint8_t k_capital_sign = 0x20;
constexpr uint8_t k_number_sign = 0x3C;
constexpr uint8_t k_blank = 0x00;

struct punctuation_cell {
    uint8_t cell;
    char mark;
};
constexpr punctuation_cell k_punctuation[] = {
    {0x02, ','}, {0x06, ';'}, {0x12, ':'}, {0x32, '.'}, {0x16, '!'}, {0x26, '?'}, {0x04, '\''}, {0x24, '-'},
};

// The letter a cell stands for ('a' + index), or -1
int letter_of(uint8_t cell) {
    for (int k = 0; k < 26; ++k) {
        if (k_letter_cells[k] == cell) {
            return k;
        }
    }
    return -1;
}

char mark_of(uint8_t cell) {
    for (const punctuation_cell & p : k_punctuation) {
        if (p.cell == cell) {
            return p.mark;
        }
    }
    return '\0';
}

// The cell of the braille character at text[i] (its length in len), or -1 for any other character
int cell_at(std::string_view text, size_t i, size_t & len) {
    const uint32_t cp = lg::decode_valid_utf8(text, i, len);
    return cp >= 0x2800 && cp <= 0x28FF ? static_cast<int>(cp - 0x2800) : -1;
}

// Fewer cells are a decoration as often as a word
constexpr size_t k_min_braille_letters = 4;

}  // namespace

namespace lg {

std::optional<std::string> decode_braille_runs(std::string_view text) {
    return replace_runs(text, [](std::string_view text, size_t i) -> run_reading {
        size_t len = 0;
        if (cell_at(text, i, len) < 0) {
            return {i + len, std::nullopt};
        }
        std::string out;
        size_t n_letters = 0;
        bool capital = false;
        bool number = false;
        size_t end = i;
        for (size_t k = i; k < text.size();) {
            const int cell = cell_at(text, k, len);
            if (cell < 0) {
                // a space goes on with the run when braille follows it
                if (text[k] != ' ' || k + 1 >= text.size() || cell_at(text, k + 1, len) < 0) {
                    break;
                }
                out += ' ';
                number = false;
                ++k;
                continue;
            }
            const auto c = static_cast<uint8_t>(cell);
            const int letter = letter_of(c);
            if (c == k_capital_sign) {
                capital = true;
            } else if (c == k_number_sign) {
                number = true;
            } else if (c == k_blank) {
                out += ' ';
                number = false;
            } else if (letter >= 0 && number && letter < 10) {
                out += static_cast<char>(letter == 9 ? '0' : '1' + letter);  // a to j after the number sign: 1 to 0
            } else if (letter >= 0) {
                out += static_cast<char>((capital ? 'A' : 'a') + letter);
                capital = false;
                ++n_letters;
            } else if (const char mark = mark_of(c)) {
                out += mark;
            } else {
                out.append(text.substr(k, len));  // a contraction of grade 2, or a dot 7 or 8: kept as written
            }
            k += len;
            end = k;
        }
        if (n_letters < k_min_braille_letters) {
            return {end, std::nullopt};
        }
        return {end, out};
    });
}

}  // namespace lg

#include "lg-decode.h"

#include "lg-fold.h"
#include "lg-text.h"

#include <cstdint>
#include <initializer_list>
#include <utility>

namespace {

// Shorter runs are ordinary words as often as base64 ("Pneumonoultra"): 16 characters carry 12 bytes
constexpr size_t k_min_base64_run = 16;

int base64_value(char c) {
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

std::string decode_base64(std::string_view run) {
    std::string out;
    uint32_t bits = 0;
    int n_bits = 0;
    for (const char c : run) {
        bits = (bits << 6) | static_cast<uint32_t>(base64_value(c));
        n_bits += 6;
        if (n_bits >= 8) {
            n_bits -= 8;
            out += static_cast<char>((bits >> n_bits) & 0xFF);
        }
    }
    return out;
}

}  // namespace

namespace lg {

// 12 random bytes are all printable about once in 100,000 draws
bool reads_as_text(std::string_view bytes) {
    if (invalid_utf8_offset(bytes) != std::string_view::npos) {
        return false;
    }
    size_t n_chars = 0;
    size_t n_alnum = 0;
    for (const char ch : bytes) {
        const auto c = static_cast<unsigned char>(ch);
        if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F) {
            return false;
        }
        if ((c & 0xC0) == 0x80) {
            continue;  // a continuation byte of the character counted at its lead byte
        }
        ++n_chars;
        n_alnum += (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0xC0;
    }
    return 2 * n_alnum >= n_chars;
}

std::optional<std::string> decode_base64_runs(std::string_view text) {
    return replace_runs(text, [](std::string_view text, size_t i) -> run_reading {
        if (base64_value(text[i]) < 0) {
            return {i + 1, std::nullopt};
        }
        size_t end = i;
        while (end < text.size() && base64_value(text[end]) >= 0) {
            ++end;
        }
        size_t padded = end;
        while (padded < text.size() && padded - end < 2 && text[padded] == '=') {
            ++padded;
        }
        const size_t n = end - i;
        const bool whole = padded == text.size() || (base64_value(text[padded]) < 0 && text[padded] != '=');
        const bool sized = padded > end ? (padded - i) % 4 == 0 : n % 4 != 1;
        if (whole && sized && n >= k_min_base64_run) {
            const std::string bytes = decode_base64(text.substr(i, n));
            if (reads_as_text(bytes)) {
                return {padded, fold_text(bytes)};
            }
        }
        return {padded, std::nullopt};
    });
}

std::optional<std::string> decoded_reading(std::string_view folded) {
    // Each decoder reads what the one before it made, so hex of base64, base64 of Morse or leetspeak in a cipher is
    // read in one round. What a later decoder makes can hold what an earlier one reads (words turned round can
    // gather a sentence in a cipher, base64 can spell hex), so rounds go on while one reads something new; a few
    // bound what nesting costs.
    constexpr int k_max_rounds = 4;
    std::optional<std::string> read;
    for (int round = 0; round < k_max_rounds; ++round) {
        const std::string_view text = read ? std::string_view(*read) : folded;
        std::optional<std::string> next;
        for (auto * decode : {read_stacked_marks, decode_char_code_runs, decode_base64_runs, decode_morse_runs,
                              read_ciphers, read_leetspeak, read_word_order}) {
            if (std::optional<std::string> decoded = decode(next ? std::string_view(*next) : text)) {
                next = std::move(decoded);
            }
        }
        if (!next || *next == text) {
            break;
        }
        read = std::move(next);
    }
    return read;
}

}  // namespace lg

#include "lg-decode.h"

#include "lg-fold.h"
#include "lg-text.h"

#include <cstdint>
#include <initializer_list>
#include <optional>
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

// RFC 4648 base32 (A-Z, 2-7, in one case), padded with '=' to a multiple of 8 or not padded at all; nothing when
// the run is not base32
std::optional<std::string> decode_base32(std::string_view run, size_t n_padding) {
    const bool upper = lg::is_ascii_upper(run[0]);
    const size_t tail = run.size() % 8;  // characters in the last group: 2, 4, 5 or 7 carry whole bytes
    if ((n_padding > 0 && (run.size() + n_padding) % 8 != 0) || tail == 1 || tail == 3 || tail == 6) {
        return std::nullopt;
    }
    std::string out;
    uint32_t bits = 0;
    int n_bits = 0;
    for (const char c : run) {
        int value = -1;
        if (lg::is_ascii_letter(c) && lg::is_ascii_upper(c) == upper) {
            value = lg::to_ascii_lower(c) - 'a';
        } else if (c >= '2' && c <= '7') {
            value = c - '2' + 26;
        }
        if (value < 0) {
            return std::nullopt;
        }
        bits = (bits << 5) | static_cast<uint32_t>(value);
        n_bits += 5;
        if (n_bits >= 8) {
            n_bits -= 8;
            out += static_cast<char>((bits >> n_bits) & 0xFF);
        }
    }
    return out;
}

// Bytes of the line break at text[i] ("\n" or "\r\n"), or 0
size_t line_break_at(std::string_view text, size_t i) {
    if (i < text.size() && text[i] == '\n') {
        return 1;
    }
    return text.substr(i).rfind("\r\n", 0) == 0 ? 2 : 0;
}

size_t base64_run_end(std::string_view text, size_t i) {
    while (i < text.size() && base64_value(text[i]) >= 0) {
        ++i;
    }
    return i;
}

// Where the '=' padding after a run ending at `end` ends, at most max_padding of them
size_t padding_end(std::string_view text, size_t end, size_t max_padding) {
    size_t padded = end;
    while (padded < text.size() && padded - end < max_padding && text[padded] == '=') {
        ++padded;
    }
    return padded;
}

// Whether n_chars of base64 and n_padding '=' can be whole base64: padded to a multiple of 4, or unpadded with a
// last group of 2 or 3 characters
bool base64_sized(size_t n_chars, size_t n_padding) {
    return n_padding > 0 ? (n_chars + n_padding) % 4 == 0 : n_chars % 4 != 1;
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

namespace {

// MIME (76 characters) and PEM (64) wrap base64 in lines of one width, which cut words and characters in two: a run
// of base64 that fills its line, a multiple of 4 characters long, followed by lines of the same width and a last one
// no wider, each holding nothing else, is read as one run. Where the run from i ends at `end`; what the lines decode
// to and where they end, when they read as text.
std::optional<run_reading> read_wrapped_base64(std::string_view text, size_t i, size_t end) {
    const size_t width = end - i;
    if (width < k_min_base64_run || width % 4 != 0 || !line_break_at(text, end)) {
        return std::nullopt;
    }
    std::string joined(text.substr(i, width));
    size_t last_end = end;  // where the lines read so far end, padding included
    size_t n_padding = 0;
    for (size_t at = end; const size_t n_break = line_break_at(text, at);) {
        const size_t start = at + n_break;
        const size_t stop = base64_run_end(text, start);
        const size_t padded = padding_end(text, stop, 2);
        const bool line_ends = padded == text.size() || line_break_at(text, padded);
        if (stop == start || stop - start > width || !line_ends) {
            break;
        }
        joined.append(text.substr(start, stop - start));
        last_end = padded;
        n_padding = padded - stop;
        if (stop - start < width || n_padding > 0) {
            break;  // a shorter or padded line is the last
        }
        at = padded;
    }
    if (last_end == end || !base64_sized(joined.size(), n_padding)) {
        return std::nullopt;
    }
    const std::string bytes = decode_base64(joined);
    if (!reads_as_text(bytes)) {
        return std::nullopt;
    }
    return run_reading{last_end, fold_text(bytes)};
}

}  // namespace

std::optional<std::string> decode_base64_runs(std::string_view text) {
    return replace_runs(text, [](std::string_view text, size_t i) -> run_reading {
        if (base64_value(text[i]) < 0) {
            return {i + 1, std::nullopt};
        }
        const size_t end = base64_run_end(text, i);
        if (std::optional<run_reading> wrapped = read_wrapped_base64(text, i, end)) {
            return std::move(*wrapped);
        }
        const size_t n = end - i;
        // where the run's padding ends, if nothing of base64's alphabet follows it
        const auto padded_end = [&](size_t max_padding, size_t & padded) {
            padded = padding_end(text, end, max_padding);
            return padded == text.size() || (base64_value(text[padded]) < 0 && text[padded] != '=');
        };
        size_t padded = end;
        const bool whole = padded_end(2, padded);
        if (whole && base64_sized(n, padded - end) && n >= k_min_base64_run) {
            const std::string bytes = decode_base64(text.substr(i, n));
            if (reads_as_text(bytes)) {
                return {padded, fold_text(bytes)};
            }
        }
        // base32 is written in base64's alphabet, in one case: a run that is not base64 text may be base32 text
        size_t padded32 = end;
        if (n >= k_min_base64_run && padded_end(6, padded32)) {
            const std::optional<std::string> bytes = decode_base32(text.substr(i, n), padded32 - end);
            if (bytes && reads_as_text(*bytes)) {
                return {padded32, fold_text(*bytes)};
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
        // ASCII85 and UUencode write '%' and '\\' among letters ("a pipe" is "+E2%6A" in ASCII85): they are decoded
        // before the escapes, which would otherwise read such a run's "%6A" as a letter and leave it undecodable
        for (auto * decode : {read_emoji_words, read_stacked_marks, read_upside_down, decode_uuencode_lines,
                              decode_ascii85_runs, read_joined_strings, read_query_text, decode_char_code_runs,
                              decode_base64_runs, decode_braille_runs, decode_nato_runs, decode_morse_runs,
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

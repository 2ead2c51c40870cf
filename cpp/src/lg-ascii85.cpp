#include "lg-decode.h"
#include "lg-fold.h"

#include <algorithm>
#include <cstdint>

namespace {

bool is_ascii85_digit(char c) { return c >= '!' && c <= 'u'; }

// Groups of five digits in base 85 ('!' = 0) are four bytes; a last group of k digits, padded with 'u', is k - 1
// bytes. Nothing when a group is past 2^32 - 1 or a lone digit is left over.
std::optional<std::string> decode_ascii85(std::string_view run) {
    if (run.size() % 5 == 1) {
        return std::nullopt;
    }
    std::string out;
    for (size_t g = 0; g < run.size(); g += 5) {
        const size_t n = std::min<size_t>(5, run.size() - g);
        uint64_t value = 0;
        for (size_t k = 0; k < 5; ++k) {
            value = value * 85 + static_cast<uint64_t>((k < n ? run[g + k] : 'u') - '!');
        }
        if (value > UINT32_MAX) {
            return std::nullopt;
        }
        for (size_t k = 0; k + 1 < n; ++k) {
            out += static_cast<char>((value >> (24 - 8 * k)) & 0xFF);
        }
    }
    return out;
}

// What the decoded bytes must hold besides reading as text: a space between words, and letters
bool reads_as_words(std::string_view bytes) {
    size_t n_letters = 0;
    bool space = false;
    for (const char c : bytes) {
        n_letters += lg::is_ascii_letter(c);
        space = space || c == ' ';
    }
    return space && n_letters >= 4 && lg::reads_as_text(bytes);
}

// 15 digits carry 12 bytes: shorter runs are ordinary words and paths as often as ASCII85
constexpr size_t k_min_ascii85_run = 15;
// ASCII85's alphabet holds quotes, colons and brackets, so a run can begin or end with the text's own
constexpr size_t k_max_wrapper_chars = 2;

}  // namespace

namespace lg {

std::optional<std::string> decode_ascii85_runs(std::string_view text) {
    return replace_runs(text, [](std::string_view text, size_t i) -> run_reading {
        if (!is_ascii85_digit(text[i])) {
            return {i + 1, std::nullopt};
        }
        const bool adobe = text.substr(i, 2) == "<~";  // Adobe's delimiters: <~ ... ~>
        const size_t begin = adobe ? i + 2 : i;
        size_t end = begin;
        while (end < text.size() && is_ascii85_digit(text[end])) {
            ++end;
        }
        const size_t closed = adobe && text.substr(end, 2) == "~>" ? end + 2 : end;
        if (end - begin < k_min_ascii85_run) {
            return {std::max(end, begin + 1), std::nullopt};
        }
        for (size_t lead = 0; lead <= (adobe ? 0 : k_max_wrapper_chars); ++lead) {
            for (size_t trail = 0; trail <= (adobe ? 0 : k_max_wrapper_chars); ++trail) {
                const std::optional<std::string> bytes =
                    decode_ascii85(text.substr(begin + lead, end - trail - begin - lead));
                if (bytes && reads_as_words(*bytes)) {
                    std::string reading(text.substr(begin, lead));  // Adobe's delimiters go, a wrapper's quote stays
                    reading += fold_text(*bytes);
                    if (closed == end) {
                        reading += text.substr(end - trail, trail);
                    }
                    return {closed, reading};
                }
            }
        }
        return {closed, std::nullopt};
    });
}

}  // namespace lg

#include "lg-decode.h"
#include "lg-fold.h"

#include <algorithm>
#include <cstdint>

namespace {

// UUencode writes at most 45 bytes a line: a length character (' ' + bytes), then four characters (' ' + 6 bits,
// '`' for 0 too) for each three bytes
constexpr size_t k_max_line_bytes = 45;
// Fewer bytes are a line of capitals and signs as often as a message
constexpr size_t k_min_uu_bytes = 8;

bool is_uu_char(char c) { return c >= ' ' && c <= '`'; }

// A line's bytes, or nothing when it is no UUencode line; carriers often strip the spaces the
// line ends in, so up to three missing characters are read as spaces
std::optional<std::string> decode_uu_line(std::string_view line) {
    if (line.empty() || line[0] <= ' ' || line[0] > ' ' + static_cast<int>(k_max_line_bytes)) {
        return std::nullopt;
    }
    const size_t n_bytes = static_cast<size_t>(line[0] - ' ');
    const size_t n_chars = (n_bytes + 2) / 3 * 4;
    const std::string_view body = line.substr(1);
    if (body.size() > n_chars || body.size() + 3 < n_chars) {
        return std::nullopt;
    }
    std::string out;
    for (size_t g = 0; g < n_chars; g += 4) {
        uint32_t bits = 0;
        for (size_t k = g; k < g + 4; ++k) {
            const char c = k < body.size() ? body[k] : ' ';
            if (!is_uu_char(c)) {
                return std::nullopt;
            }
            bits = (bits << 6) | static_cast<uint32_t>((c - ' ') & 0x3F);
        }
        for (int k = 0; k < 3 && out.size() < n_bytes; ++k) {
            out += static_cast<char>((bits >> (16 - 8 * k)) & 0xFF);
        }
    }
    return out;
}

size_t line_end(std::string_view text, size_t i) {
    const size_t end = text.find('\n', i);
    return end == std::string_view::npos ? text.size() : end;
}

std::string_view without_cr(std::string_view line) {
    return !line.empty() && line.back() == '\r' ? line.substr(0, line.size() - 1) : line;
}

// A UUencoded file's frame: "begin 644 name" before the lines, "`" (or a lone space) and "end" after them
bool is_frame_line(std::string_view line) {
    return line.substr(0, 6) == "begin " || line == "end" || line == "`" || line == " ";
}

}  // namespace

namespace lg {

std::optional<std::string> decode_uuencode_lines(std::string_view text) {
    return replace_runs(text, [](std::string_view text, size_t i) -> run_reading {
        const size_t next_line = std::min(line_end(text, i) + 1, text.size());
        if (i > 0 && text[i - 1] != '\n') {
            return {next_line, std::nullopt};  // runs are whole lines
        }
        // the lines from i on that decode (and frame lines), their bytes in order
        std::string bytes;
        size_t end = i;
        for (size_t k = i; k < text.size();) {
            const size_t e = line_end(text, k);
            const std::string_view line = without_cr(text.substr(k, e - k));
            if (std::optional<std::string> decoded = decode_uu_line(line)) {
                bytes += *decoded;
            } else if (!is_frame_line(line)) {
                break;
            }
            end = e;
            k = e + 1;
        }
        if (bytes.size() < k_min_uu_bytes || !reads_as_text(bytes)) {
            // the lines read are not read again from a later one: each line is scanned once
            return {std::max(end, next_line), std::nullopt};
        }
        return {end, fold_text(bytes)};
    });
}

}  // namespace lg

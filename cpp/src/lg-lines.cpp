#include "lg-lines.h"

#include "lg-decode.h"

#include <optional>
#include <unordered_set>

namespace lg {

namespace {

// Bytes of the line break starting at text[i], or 0: ASCII breaks and the UTF-8 forms of U+0085, U+2028, U+2029.
size_t line_break_at(std::string_view text, size_t i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '\n' || c == '\r' || c == '\v' || c == '\f') {
        return 1;
    }
    const std::string_view rest = text.substr(i);
    if (rest.rfind("\xC2\x85", 0) == 0) {
        return 2;
    }
    if (rest.rfind("\xE2\x80\xA8", 0) == 0 || rest.rfind("\xE2\x80\xA9", 0) == 0) {
        return 3;
    }
    return 0;
}

std::string_view trimmed(std::string_view line) {
    const size_t begin = line.find_first_not_of(" \t");
    if (begin == std::string_view::npos) {
        return {};
    }
    return line.substr(begin, line.find_last_not_of(" \t") - begin + 1);
}

// The trimmed lines of text with something on them, in order, repeats included.
std::vector<std::string_view> filled_lines(std::string_view text) {
    std::vector<std::string_view> lines;
    const auto take = [&](std::string_view line) {
        line = trimmed(line);
        if (!line.empty()) {
            lines.push_back(line);
        }
    };
    size_t begin = 0;
    for (size_t i = 0; i < text.size();) {
        if (const size_t n = line_break_at(text, i)) {
            take(text.substr(begin, i - begin));
            i += n;
            begin = i;
        } else {
            ++i;
        }
    }
    take(text.substr(begin));
    return lines;
}

}  // namespace

std::vector<std::string> text_lines(std::string_view folded) {
    std::vector<std::string> lines;
    std::unordered_set<std::string> read;  // what reading the lines already scores: each line and its decoded reading
    const std::vector<std::string_view> written = filled_lines(folded);
    if (written.size() >= 2) {
        for (const std::string_view line : written) {
            if (read.emplace(line).second) {
                lines.emplace_back(line);
                if (std::optional<std::string> decoded = decoded_reading(line)) {
                    read.insert(std::move(*decoded));
                }
            }
        }
    }
    // An encoding can hold lines of its own (base64 of several paragraphs) or span lines (UUencode, wrapped base64),
    // and a request buried in it is averaged into the rest once decoded: the decoded text's lines are read alone too,
    // those the written lines' readings do not already give.
    if (const std::optional<std::string> decoded = decoded_reading(folded)) {
        const std::vector<std::string_view> decoded_lines = filled_lines(*decoded);
        if (decoded_lines.size() >= 2) {
            for (const std::string_view line : decoded_lines) {
                if (read.emplace(line).second) {
                    lines.emplace_back(line);
                }
            }
        }
    }
    return lines;
}

}  // namespace lg

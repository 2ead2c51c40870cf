#include "lg-lines.h"

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

}  // namespace

std::vector<std::string> text_lines(std::string_view folded) {
    std::vector<std::string> lines;
    std::unordered_set<std::string_view> seen;
    size_t n_filled = 0;
    const auto take = [&](std::string_view line) {
        line = trimmed(line);
        if (line.empty()) {
            return;
        }
        ++n_filled;
        if (seen.insert(line).second) {
            lines.emplace_back(line);
        }
    };
    size_t begin = 0;
    for (size_t i = 0; i < folded.size();) {
        if (const size_t n = line_break_at(folded, i)) {
            take(folded.substr(begin, i - begin));
            i += n;
            begin = i;
        } else {
            ++i;
        }
    }
    take(folded.substr(begin));
    if (n_filled < 2) {
        lines.clear();
    }
    return lines;
}

}  // namespace lg

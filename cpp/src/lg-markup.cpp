#include "lg-markup.h"

#include "lg-decode.h"

#include <algorithm>
#include <iterator>
#include <vector>

namespace lg {
namespace {

// Inline elements, which a browser draws inside a line of text, and <wbr> ("a word may break here", made for the
// inside of words): only these are taken for tags, so that a generic type in code ("List<String>x") is not.
constexpr std::string_view k_inline_tags[] = {
    "a",   "abbr", "b",    "bdi",    "bdo",    "big", "cite", "code", "data", "del", "dfn", "em",  "font",
    "i",   "ins",  "kbd",  "mark",   "q",      "s",   "samp", "small", "span", "strike", "strong", "sub", "sup",
    "time", "tt",  "u",    "var",    "wbr"};

// A tag or comment is no longer than this: a '<' that finds no '>' within it starts no markup.
constexpr size_t k_max_markup = 256;

bool is_inline_tag(std::string_view name) {
    std::string lower(name);
    std::transform(lower.begin(), lower.end(), lower.begin(), to_ascii_lower);
    return std::find(std::begin(k_inline_tags), std::end(k_inline_tags), lower) != std::end(k_inline_tags);
}

// The length of the HTML comment or inline tag at text[i] ("<!-- x -->", "<b>", "</span>", "<font color=red>",
// "<wbr/>"), or 0 where there is none.
size_t markup_at(std::string_view text, size_t i) {
    if (text.compare(i, 4, "<!--") == 0) {
        // looked for within the limit only: a text of unclosed comments is read in linear time
        const size_t end = text.substr(i, k_max_markup).find("-->", 4);
        return end != std::string_view::npos ? end + 3 : 0;
    }
    if (text[i] != '<') {
        return 0;
    }
    size_t j = i + 1;
    if (j < text.size() && text[j] == '/') {
        ++j;
    }
    const size_t name_begin = j;
    while (j < text.size() && is_ascii_alnum(text[j])) {
        ++j;
    }
    if (j == name_begin || !is_ascii_letter(text[name_begin]) ||
        !is_inline_tag(text.substr(name_begin, j - name_begin))) {
        return 0;
    }
    if (j < text.size() && !is_ascii_space(text[j]) && text[j] != '>' && text[j] != '/') {
        return 0;  // the name ends at a space, '>' or '/': "<b-1>" is no tag
    }
    // attributes: anything up to the '>' but another '<' or a line break
    for (; j < text.size() && j - i < k_max_markup; ++j) {
        if (text[j] == '>') {
            return j + 1 - i;
        }
        if (text[j] == '<' || text[j] == '\n') {
            return 0;
        }
    }
    return 0;
}

struct span {
    size_t begin, end;
};

// Runs of tags and comments that stand inside a word, in order.
void find_tags(std::string_view text, std::vector<span> & cut) {
    cut.clear();
    for (size_t i = text.find_first_of('<'); i != std::string_view::npos; i = text.find_first_of('<', i)) {
        span run{i, i};
        for (size_t len; run.end < text.size() && (len = markup_at(text, run.end)) > 0;) {
            run.end += len;
        }
        if (run.end == run.begin) {
            ++i;
            continue;
        }
        if (inside_word(text, run.begin, run.end)) {
            cut.push_back(run);
        }
        i = run.end;
    }
}

// Markdown's emphasis (*, **, ***) and code (`) marks that open and close inside a word: in each run of text between
// spaces, runs of the mark that pair up (the first with the second, the third with the fourth, each pair of one
// length), one of them inside the word, and nothing but letters, digits and the marks in between.
void find_emphasis(std::string_view text, std::vector<span> & cut) {
    cut.clear();
    const auto is_mark = [](char c) { return c == '*' || c == '`'; };
    std::vector<span> marks;  // of the current word
    size_t i = 0;
    while (i < text.size()) {
        while (i < text.size() && is_ascii_space(text[i])) {
            ++i;
        }
        size_t end = i;
        while (end < text.size() && !is_ascii_space(text[end])) {
            ++end;
        }
        // the word without the punctuation a sentence puts around it ("(b**o**mb).")
        size_t begin = i;
        while (begin < end && !is_ascii_alnum(text[begin]) && !is_mark(text[begin])) {
            ++begin;
        }
        size_t last = end;
        while (last > begin && !is_ascii_alnum(text[last - 1]) && !is_mark(text[last - 1])) {
            --last;
        }
        marks.clear();
        bool plain = true;
        for (size_t j = begin; j < last && plain;) {
            if (is_mark(text[j])) {
                size_t k = j;
                while (k < last && text[k] == text[j]) {
                    ++k;
                }
                marks.push_back({j, k});
                j = k;
            } else {
                plain = is_ascii_alnum(text[j]);
                ++j;
            }
        }
        bool paired = plain && !marks.empty() && marks.size() % 2 == 0;
        for (size_t m = 0; paired && m < marks.size(); m += 2) {
            const size_t len = marks[m].end - marks[m].begin;
            paired = len <= 3 && text[marks[m].begin] == text[marks[m + 1].begin] &&
                     len == marks[m + 1].end - marks[m + 1].begin;
        }
        const auto in_word = [&](const span & s) { return inside_word(text, s.begin, s.end); };
        if (paired && std::any_of(marks.begin(), marks.end(), in_word)) {
            cut.insert(cut.end(), marks.begin(), marks.end());
        }
        i = end;
    }
}

// The text without the spans, which are in order and do not overlap.
std::string without(std::string_view text, const std::vector<span> & cut) {
    std::string out;
    out.reserve(text.size());
    size_t copied = 0;
    for (const span & s : cut) {
        out.append(text.substr(copied, s.begin - copied));
        copied = s.end;
    }
    out.append(text.substr(copied));
    return out;
}

}  // namespace

bool inside_word(std::string_view text, size_t begin, size_t end) {
    if (begin == 0 || end >= text.size() || !is_ascii_alnum(text[begin - 1]) || !is_ascii_alnum(text[end])) {
        return false;
    }
    return is_ascii_letter(text[begin - 1]) || is_ascii_letter(text[end]);
}

std::string read_through_markup(std::string_view text) {
    std::vector<span> cut;
    find_tags(text, cut);
    const std::string untagged = cut.empty() ? std::string(text) : without(text, cut);
    // emphasis after tags: "b*<i></i>o*mb" is emphasis inside a word once the tag is out
    find_emphasis(untagged, cut);
    return cut.empty() ? untagged : without(untagged, cut);
}

}  // namespace lg

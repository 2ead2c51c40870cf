#include "lg-markup.h"

#include "lg-char-refs.h"
#include "lg-decode.h"
#include "lg-fold.h"
#include "lg-text.h"

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

// Whether a character reference inside a word may hide the word: a letter, a digit, an invisible character or a
// pictograph. Not a control character (a line break made inside a word would split its line), nor punctuation or a
// space, which a word holds beside its letters ("don&#8217;t", "FAN&#65292;REALLY", "&#8220;word&#8221;") and a
// subword tokenizer splits at anyway.
bool may_hide_word(uint32_t cp) {
    const auto in = [cp](uint32_t first, uint32_t last) { return cp >= first && cp <= last; };
    if (cp < 0x80) {
        return is_ascii_alnum(static_cast<char>(cp));
    }
    return is_ignorable(cp) || !(in(0x80, 0xBF) || in(0x2000, 0x206F) || in(0x3000, 0x303F) || in(0xFF01, 0xFF20) ||
                                 in(0xFF3B, 0xFF40) || in(0xFF5B, 0xFF65));
}

// The length of the character reference to an invisible character at text[i] ("&shy;", "&#8203;"), or 0
size_t invisible_reference_at(std::string_view text, size_t i) {
    const std::optional<char_reference> ref = html_reference_at(text, i);
    return ref && is_ignorable(ref->code_point) ? ref->end - i : 0;
}

// The length of the HTML comment, inline tag or reference to an invisible character at text[i] ("<!-- x -->",
// "<b>", "</span>", "<font color=red>", "<wbr/>", "&shy;"), or 0 where there is none.
size_t markup_at(std::string_view text, size_t i) {
    if (const size_t len = invisible_reference_at(text, i)) {
        return len;
    }
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
    std::string replacement;  // what stands for text[begin, end): nothing for markup taken out
};

// The length of the terminal escape sequence at text[i], or 0: a control sequence (ESC [, parameters, a final
// letter: "\x1b[1;31m") or an operating-system command (ESC ], ended by BEL or ESC \\: a hyperlink, a title).
size_t terminal_escape_at(std::string_view text, size_t i) {
    if (text.compare(i, 1, "\x1b") != 0 || i + 1 >= text.size()) {
        return 0;
    }
    const std::string_view rest = text.substr(i, k_max_markup);
    if (rest[1] == '[') {
        size_t j = 2;
        while (j < rest.size() && rest[j] >= 0x20 && rest[j] <= 0x3F) {
            ++j;  // parameters and intermediate bytes
        }
        return j < rest.size() && rest[j] >= 0x40 && rest[j] <= 0x7E ? j + 1 : 0;
    }
    if (rest[1] == ']') {
        for (size_t j = 2; j < rest.size(); ++j) {
            if (rest[j] == '\x07') {
                return j + 1;
            }
            if (rest[j] == '\x1b') {
                return j + 1 < rest.size() && rest[j + 1] == '\\' ? j + 2 : 0;
            }
        }
    }
    return 0;
}

// Terminal escape sequences, wherever they are: a terminal draws none of their bytes, and read as text the
// sequence's final letter joins the word it colours ("\x1b[31mbomb" reads "mbomb").
void find_terminal_escapes(std::string_view text, std::vector<span> & cut) {
    cut.clear();
    for (size_t i = text.find('\x1b'); i != std::string_view::npos; i = text.find('\x1b', i)) {
        const size_t len = terminal_escape_at(text, i);
        if (len > 0) {
            cut.push_back({i, i + len, {}});
        }
        i += std::max<size_t>(len, 1);
    }
}

// Runs of HTML character references that cut a word or spell part of it, replaced by the characters they stand
// for: inside a word letters, invisible characters and pictographs ("b&#x6f;mb", "b&shy;omb", "bo&#8203;mb",
// "b&#x43e;mb"; folded on the next pass, as invisible characters and look-alike letters are), at a word's start or
// end letters and digits ("&#98;omb", "r&#233;sum&#233;"). Emoji beside a word (scraped tweets write
// "lol&#128514;") leave the word whole and stay, as do references between spaces or in a run spelling words (what
// the decoders read: lg-char-codes.cpp).
void find_char_references(std::string_view text, std::vector<span> & edits) {
    edits.clear();
    for (size_t i = text.find('&'); i != std::string_view::npos; i = text.find('&', i)) {
        span run{i, i, {}};
        bool letters_only = true;  // or digits: what may stand at a word's start or end
        while (const std::optional<char_reference> ref = html_reference_at(text, run.end)) {
            if (!may_hide_word(ref->code_point)) {
                break;
            }
            // below General Punctuation: Latin, Greek, Cyrillic, Armenian, ... letters, not pictographs
            letters_only = letters_only && ref->code_point < 0x2000 && !is_ignorable(ref->code_point);
            append_utf8(run.replacement, ref->code_point);
            run.end = ref->end;
        }
        if (run.end == run.begin) {
            ++i;
            continue;
        }
        const bool beside_letter = (run.begin > 0 && is_ascii_letter(text[run.begin - 1])) ||
                                   (run.end < text.size() && is_ascii_letter(text[run.end]));
        if (inside_word(text, run.begin, run.end) || (letters_only && beside_letter)) {
            edits.push_back(std::move(run));
        }
        i = run.end;
    }
}

// Runs of tags, comments and references to invisible characters that stand inside a word, in order.
void find_tags(std::string_view text, std::vector<span> & cut) {
    cut.clear();
    for (size_t i = text.find_first_of("<&"); i != std::string_view::npos; i = text.find_first_of("<&", i)) {
        span run{i, i, {}};
        for (size_t len; run.end < text.size() && (len = markup_at(text, run.end)) > 0;) {
            run.end += len;
        }
        if (run.end == run.begin) {
            ++i;
            continue;
        }
        if (inside_word(text, run.begin, run.end)) {
            cut.push_back(std::move(run));
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
                marks.push_back({j, k, {}});
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

// The text with each span replaced; the spans are in order and do not overlap.
std::string edited(std::string_view text, const std::vector<span> & edits) {
    std::string out;
    out.reserve(text.size());
    size_t copied = 0;
    for (const span & s : edits) {
        out.append(text.substr(copied, s.begin - copied));
        out.append(s.replacement);
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
    std::vector<span> edits;
    std::string read(text);
    // each reads what the one before it made: "b*<i></i>o*mb" is emphasis inside a word once the tag is out
    for (auto * find : {find_terminal_escapes, find_char_references, find_tags, find_emphasis}) {
        find(read, edits);
        if (!edits.empty()) {
            read = edited(read, edits);
        }
    }
    return read;
}

}  // namespace lg

#include "lg-fold.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <vector>

namespace lg {
namespace {

struct fold_entry {
    uint32_t cp;
    const char * text;
};

constexpr fold_entry fold_table[] = {
#include "lg-fold-table.inc"
};

struct cp_range {
    uint32_t first, last;
};

// Unicode's Default_Ignorable_Code_Point: drawn as nothing, so text can hide anything between them. The
// Hangul fillers among them are left to the Hangul text they belong to.
constexpr cp_range ignorable[] = {
    {0x00AD, 0x00AD}, {0x034F, 0x034F}, {0x061C, 0x061C}, {0x17B4, 0x17B5}, {0x180B, 0x180F},
    {0x200B, 0x200F}, {0x202A, 0x202E}, {0x2060, 0x206F}, {0xFE00, 0xFE0F}, {0xFEFF, 0xFEFF},
    {0xFFF0, 0xFFF8}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A}, {0xE0000, 0xE0FFF},
};

struct look_alike {
    uint32_t cp;
    char latin;
};

// Letters of other scripts drawn like a Latin letter in common fonts, sorted by code point.
constexpr look_alike look_alikes[] = {
    {0x0391, 'A'}, {0x0392, 'B'}, {0x0395, 'E'}, {0x0396, 'Z'}, {0x0397, 'H'}, {0x0399, 'I'}, {0x039A, 'K'},
    {0x039C, 'M'}, {0x039D, 'N'}, {0x039F, 'O'}, {0x03A1, 'P'}, {0x03A4, 'T'}, {0x03A5, 'Y'}, {0x03A7, 'X'},
    {0x03B1, 'a'}, {0x03B9, 'i'}, {0x03BA, 'k'}, {0x03BD, 'v'}, {0x03BF, 'o'}, {0x03C1, 'p'}, {0x03C5, 'u'},
    {0x03C7, 'x'}, {0x0405, 'S'}, {0x0406, 'I'}, {0x0408, 'J'}, {0x0410, 'A'}, {0x0412, 'B'}, {0x0415, 'E'},
    {0x041A, 'K'}, {0x041C, 'M'}, {0x041D, 'H'}, {0x041E, 'O'}, {0x0420, 'P'}, {0x0421, 'C'}, {0x0422, 'T'},
    {0x0423, 'Y'}, {0x0425, 'X'}, {0x0430, 'a'}, {0x0435, 'e'}, {0x043A, 'k'}, {0x043E, 'o'}, {0x0440, 'p'},
    {0x0441, 'c'}, {0x0443, 'y'}, {0x0445, 'x'}, {0x0455, 's'}, {0x0456, 'i'}, {0x0458, 'j'}, {0x04BB, 'h'},
    {0x04C0, 'l'}, {0x04CF, 'l'}, {0x0501, 'd'}, {0x051A, 'Q'}, {0x051B, 'q'}, {0x051C, 'W'}, {0x051D, 'w'},
    {0x057D, 'u'}, {0x0585, 'o'},
};

template <typename Table> constexpr bool sorted_by_cp(const Table & table) {
    for (size_t i = 1; i < std::size(table); ++i) {
        if (!(table[i - 1].cp < table[i].cp)) {
            return false;
        }
    }
    return true;
}
static_assert(sorted_by_cp(fold_table) && sorted_by_cp(look_alikes), "find_cp searches by binary search");

template <typename Table, typename Key>
const auto * find_cp(const Table & table, Key cp) {
    const auto * end = std::end(table);
    const auto * it = std::lower_bound(std::begin(table), end, cp, [](const auto & e, Key c) { return e.cp < c; });
    return it != end && it->cp == cp ? it : nullptr;
}

bool is_ignorable(uint32_t cp) {
    return std::any_of(std::begin(ignorable), std::end(ignorable),
                       [cp](const cp_range & r) { return cp >= r.first && cp <= r.last; });
}

bool is_latin_letter(uint32_t cp) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
           (cp >= 0xC0 && cp <= 0x24F && cp != 0xD7 && cp != 0xF7) || (cp >= 0x1E00 && cp <= 0x1EFF);
}

// Words end at ASCII that is not a letter or digit, and at the Unicode spaces folding leaves.
bool ends_word(uint32_t cp) {
    if (cp < 0x80) {
        return !((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9'));
    }
    return cp == 0x85 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x3000;
}

// The code point starting at text[i] and its length; the text is valid UTF-8.
uint32_t decode(std::string_view text, size_t i, size_t & len) {
    const auto lead = static_cast<unsigned char>(text[i]);
    len = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
    uint32_t cp = len == 1 ? lead : len == 2 ? lead & 0x1F : len == 3 ? lead & 0x0F : lead & 0x07;
    for (size_t k = 1; k < len; ++k) {
        cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
    }
    return cp;
}

// Greek, Cyrillic and Armenian: the scripts of the look-alikes.
bool is_look_alike_script(uint32_t cp) {
    return (cp >= 0x370 && cp <= 0x58F) || (cp >= 0x1C80 && cp <= 0x1C8F) || (cp >= 0x1F00 && cp <= 0x1FFF) ||
           (cp >= 0x2DE0 && cp <= 0x2DFF) || (cp >= 0xA640 && cp <= 0xA69F);
}

struct word_letters {
    size_t latin = 0;       // Latin letters
    size_t alike = 0;       // look-alike letters
    size_t own_script = 0;  // letters of the look-alikes' scripts that look like no Latin letter
    size_t other = 0;       // any other code point past ASCII
};

word_letters count_letters(std::string_view word) {
    word_letters n;
    size_t len = 0;
    for (size_t i = 0; i < word.size(); i += len) {
        const uint32_t cp = decode(word, i, len);
        if (is_latin_letter(cp)) {
            ++n.latin;
        } else if (find_cp(look_alikes, cp)) {
            ++n.alike;
        } else if (is_look_alike_script(cp)) {
            ++n.own_script;
        } else if (cp >= 0x80) {
            ++n.other;
        }
    }
    return n;
}

// Appends a word, its look-alike letters made Latin where it is spelling a Latin word: it holds a Latin letter
// too, or it is made of look-alikes only in a text that is mostly Latin ("а ріре" in an English sentence).
// A word of Greek, Cyrillic or Armenian text keeps its letters.
void append_word(std::string & out, std::string_view word, const word_letters & n, bool latin_text) {
    const bool spelled_latin = n.alike > 0 && (n.latin > 0 || (latin_text && n.own_script == 0 && n.other == 0));
    if (!spelled_latin) {
        out.append(word);
        return;
    }
    size_t len = 0;
    for (size_t i = 0; i < word.size(); i += len) {
        const uint32_t cp = decode(word, i, len);
        if (const look_alike * l = find_cp(look_alikes, cp)) {
            out.push_back(l->latin);
        } else {
            out.append(word.substr(i, len));
        }
    }
}

}  // namespace

std::string fold_text(std::string_view text) {
    std::string folded;
    folded.reserve(text.size());
    size_t len = 0;
    for (size_t i = 0; i < text.size(); i += len) {
        const uint32_t cp = decode(text, i, len);
        if (cp < 0x80) {
            folded.push_back(static_cast<char>(cp));
        } else if (const fold_entry * e = find_cp(fold_table, cp)) {
            folded.append(e->text);
        } else if (!is_ignorable(cp)) {
            folded.append(text.substr(i, len));
        }
    }
    if (std::all_of(folded.begin(), folded.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
        return folded;
    }
    struct word {
        std::string_view text;
        std::string_view after;  // the code point that ends it ("" for the last)
        word_letters letters;
    };
    std::vector<word> words;
    const std::string_view all(folded);
    size_t word_start = 0;
    const auto add_word = [&](size_t end, std::string_view after) {
        const std::string_view text = all.substr(word_start, end - word_start);
        words.push_back({text, after, count_letters(text)});
    };
    for (size_t i = 0; i < all.size(); i += len) {
        if (ends_word(decode(all, i, len))) {
            add_word(i, all.substr(i, len));
            word_start = i + len;
        }
    }
    add_word(all.size(), std::string_view());
    size_t latin = 0;
    size_t own_script = 0;
    for (const word & w : words) {
        latin += w.letters.latin;
        own_script += w.letters.own_script;
    }
    std::string out;
    out.reserve(folded.size());
    for (const word & w : words) {
        append_word(out, w.text, w.letters, latin > own_script);
        out.append(w.after);
    }
    return out;
}

}  // namespace lg

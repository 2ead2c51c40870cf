#include "lg-fold.h"

#include "lg-cp-table.h"
#include "lg-emoji.h"
#include "lg-markup.h"
#include "lg-text.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <iterator>
#include <vector>

namespace lg {
namespace {

// The most passes fold_text makes, folding its output again until nothing changes: every text of ../shared/data
// takes two, the second changing nothing
constexpr int k_max_fold_passes = 8;

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

// Tag characters: drawn as nothing, but U+E0020-U+E007E are ASCII's printable characters moved by 0xE0000, and a
// chat model's tokenizer reads them ("ASCII smuggling": a request hidden after a harmless one). They are read as that
// ASCII, so the guard reads what was hidden; the other tags (language tag, cancel tag) go as ignorable.
constexpr uint32_t k_first_ascii_tag = 0xE0020;
constexpr uint32_t k_last_ascii_tag = 0xE007E;

// Alphabets of symbols with no compatibility form, read as the capitals A-Z in order: the regional indicators flags
// are drawn from in pairs ("🇫🇷" is FR, so a flag reads as its country's code and words spelled in them, "🇭🇴🇼", as
// the words), and the negative circled and negative squared capitals "bubble text" generators spell words in
// ("🅑🅞🅜🅑", "🅱🅾🅼🅱").
constexpr cp_range capital_alphabets[] = {{0x1F150, 0x1F169}, {0x1F170, 0x1F189}, {0x1F1E6, 0x1F1FF}};

// The one of ranges that holds cp, or nullptr
template <size_t N> const cp_range * range_of(const cp_range (&ranges)[N], uint32_t cp) {
    const auto * it = std::find_if(std::begin(ranges), std::end(ranges),
                                   [cp](const cp_range & r) { return cp >= r.first && cp <= r.last; });
    return it != std::end(ranges) ? it : nullptr;
}

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

// Small capitals, which "fancy text" generators spell words with ("ʜᴏᴡ ᴛᴏ"): Latin letters of their own with no
// compatibility form, read as the lower-case letter they are drawn as. IPA writes a few of them (ɪ, ʀ, ʏ): read so, a
// transcription still reads as its sounds.
constexpr look_alike small_capitals[] = {
    {0x0262, 'g'}, {0x026A, 'i'}, {0x0274, 'n'}, {0x0280, 'r'}, {0x028F, 'y'}, {0x0299, 'b'}, {0x029C, 'h'},
    {0x029F, 'l'}, {0x1D00, 'a'}, {0x1D04, 'c'}, {0x1D05, 'd'}, {0x1D07, 'e'}, {0x1D0A, 'j'}, {0x1D0B, 'k'},
    {0x1D0D, 'm'}, {0x1D0F, 'o'}, {0x1D18, 'p'}, {0x1D1B, 't'}, {0x1D1C, 'u'}, {0x1D20, 'v'}, {0x1D21, 'w'},
    {0x1D22, 'z'}, {0xA730, 'f'}, {0xA731, 's'},
};

static_assert(sorted_by_cp(fold_table) && sorted_by_cp(look_alikes) && sorted_by_cp(small_capitals),
              "find_cp searches by binary search");

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
        const uint32_t cp = decode_valid_utf8(word, i, len);
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
        const uint32_t cp = decode_valid_utf8(word, i, len);
        if (const look_alike * l = find_cp(look_alikes, cp)) {
            out.push_back(l->latin);
        } else {
            out.append(word.substr(i, len));
        }
    }
}

// A letter standing alone: an ASCII letter with no letter, digit, apostrophe or non-ASCII character beside it.
bool lone_letter(std::string_view text, size_t i) {
    const auto word_char = [&](size_t k) {
        const auto c = static_cast<unsigned char>(text[k]);
        return std::isalnum(c) || c == '\'' || c >= 0x80;
    };
    return i < text.size() && std::isalpha(static_cast<unsigned char>(text[i])) && (i == 0 || !word_char(i - 1)) &&
           (i + 1 == text.size() || !word_char(i + 1));
}

// What can stand between the letters of a word spelled out: a space, a tab, a line break (a word written down the
// page) or any ASCII punctuation but the apostrophe, which is part of a word, and the backslash, which starts an
// escape ("\n\n" is no word) ("F-R-A-U-D", "w|o|r|d", "b/o/m/b").
bool letter_separator(char c) {
    return c == ' ' || c == '\t' || c == '\n' ||
           (std::ispunct(static_cast<unsigned char>(c)) && c != '\'' && c != '\\');
}

// Two letters so joined are an abbreviation more often than a word ("w/o", "n/a", "R&D", "Q&A").
bool abbreviation_mark(char c) { return c == '/' || c == '&'; }
bool sentence_mark(char c) { return c == '.' || c == ',' || c == '!' || c == '?' || c == ';' || c == ':'; }

// What stands between a lone letter and the next: one separator character, or up to 3 spaces ("b  o  m  b"; not
// "d**n", a word censored).
struct letter_gap {
    char separator = '\0';  // '\0': no lone letter follows
    size_t width = 0;
};

letter_gap gap_after(std::string_view text, size_t letter) {
    const size_t from = letter + 1;
    if (from >= text.size() || !letter_separator(text[from])) {
        return {};
    }
    size_t width = 1;
    while (from + width < text.size() && text[from + width] == text[from]) {
        ++width;
    }
    if (width > (text[from] == ' ' ? 3 : 1) || !lone_letter(text, from + width)) {
        return {};
    }
    return {text[from], width};
}

// Lone letters joined by one gap, repeated: "b o m b", "F-R-A-U-D", "w.o.r.d", "b  o  m  b"; a lone letter alone too.
struct spaced_run {
    size_t begin, end;  // text[begin, end)
    size_t letters;
    char separator;  // '\0' for a lone letter alone
    size_t width;    // how many times the separator stands between two letters (0 for a lone letter alone)
};

// The separator both runs share, where one of them is spaced by something other than spaces and the other by the
// same or is a lone letter; '\0' otherwise.
char shared_separator(const spaced_run & a, const spaced_run & b) {
    const char c = a.separator ? a.separator : b.separator;
    const bool fits = (a.separator == c || a.separator == '\0') && (b.separator == c || b.separator == '\0');
    return fits && c != ' ' ? c : '\0';
}

// The gap between two runs of one spaced-out sentence: spaces, or a sentence mark then spaces (", " in "b o m b ,
// n o w") between runs spaced by spaces, where a gap of spaces alone takes two (one is a run's own separator). Between
// runs spaced by another separator, that separator around spaces or none: text with the separator put between every
// two characters, spaces included ("h-o-w- -t-o", Python's "-".join), or a word written down the page per line with
// a blank line between words. Returns false for any other gap; mark receives the sentence mark ('\0' for none).
bool sentence_gap(std::string_view gap, const spaced_run & a, const spaced_run & b, char & mark) {
    mark = '\0';
    if (const char c = shared_separator(a, b);
        c && gap.size() >= 2 && gap.front() == c && gap.back() == c &&
        gap.find_first_not_of(' ', 1) == gap.size() - 1) {
        return true;
    }
    const size_t at = gap.find_first_not_of(' ');
    const bool by_spaces = (a.separator == ' ' || a.separator == '\0') && (b.separator == ' ' || b.separator == '\0');
    // wider than the runs' own gaps: "h  o  w     t  o"
    const size_t word_gap = std::max<size_t>({a.width, b.width, 1}) + 1;
    if (at != std::string_view::npos) {
        // Only between runs spaced by spaces: "e.g. U.S." are initials, each ended by its own mark.
        if (!by_spaces || !sentence_mark(gap[at]) || gap.find_first_not_of(' ', at + 1) != std::string_view::npos ||
            at + 1 == gap.size()) {
            return false;
        }
        mark = gap[at];
        return true;
    }
    return !gap.empty() && (gap.size() >= word_gap || !by_spaces);
}

// Letters spaced out ("h o w   t o   m a k e   a   b o m b", "F-R-A-U-D") joined into the words a reader reads:
// a subword tokenizer reads one letter a token, which no guard was trained on. A group of runs joined by
// sentence gaps is joined when one run holds at least 4 letters or two hold at least 2 (not abbreviations: "w/o b/c"),
// so that chat shorthand ("r u a", "i m a") and initials ("U.S.A.", "e.g.") stay as written.
std::string join_spaced_letters(std::string_view text) {
    std::vector<spaced_run> runs;
    for (size_t i = 0; i < text.size();) {
        if (!lone_letter(text, i)) {
            ++i;
            continue;
        }
        spaced_run run{i, i + 1, 1, '\0', 0};
        // A space binds less than the other separators, and a narrow gap more than a wide one: a second letter that
        // starts a run of another gap belongs to that run ("a b-o-m-b", "a  b o m b").
        const letter_gap gap = gap_after(text, i);
        const letter_gap next_gap = gap.width ? gap_after(text, i + gap.width + 1) : letter_gap{};
        const bool starts_other = next_gap.width && (next_gap.separator != gap.separator ? gap.separator == ' '
                                                                                         : next_gap.width < gap.width);
        if (gap.width && !starts_other) {
            run.separator = gap.separator;
            run.width = gap.width;
            for (letter_gap next = gap; next.separator == run.separator && next.width == run.width;
                 next = gap_after(text, run.end - 1)) {
                run.end += run.width + 1;
                ++run.letters;
            }
        }
        runs.push_back(run);
        i = run.end;
    }
    std::string out;
    size_t copied = 0;  // text[0, copied) is in out
    for (size_t first = 0; first < runs.size();) {
        size_t last = first;
        char mark = '\0';
        while (last + 1 < runs.size() &&
               sentence_gap(text.substr(runs[last].end, runs[last + 1].begin - runs[last].end), runs[last],
                            runs[last + 1], mark)) {
            ++last;
        }
        size_t longest = 0;
        size_t words = 0;
        for (size_t r = first; r <= last; ++r) {
            longest = std::max(longest, runs[r].letters);
            words += runs[r].letters >= 3 || (runs[r].letters == 2 && !abbreviation_mark(runs[r].separator));
        }
        if (longest < 4 && words < 2) {
            first = last + 1;
            continue;
        }
        out.append(text.substr(copied, runs[first].begin - copied));
        for (size_t r = first; r <= last; ++r) {
            for (size_t k = runs[r].begin; k < runs[r].end; k += runs[r].width + 1) {
                out.push_back(text[k]);
            }
            if (r < last) {
                sentence_gap(text.substr(runs[r].end, runs[r + 1].begin - runs[r].end), runs[r], runs[r + 1], mark);
                if (mark) {
                    out.push_back(mark);
                }
                out.push_back(' ');
            }
        }
        copied = runs[last].end;
        // "b o m b .", "b  o  m  b  ." and "b-o-m-b-." end as "bomb."
        const std::string_view rest = text.substr(copied);
        const char before_mark = rest.empty() || rest[0] != runs[last].separator ? ' ' : runs[last].separator;
        const size_t n = std::min(rest.find_first_not_of(before_mark), rest.size());
        if (n >= 1 && n < rest.size() && n <= std::max<size_t>(runs[last].width, 1) && sentence_mark(rest[n]) &&
            (n + 1 == rest.size() || std::isspace(static_cast<unsigned char>(rest[n + 1])))) {
            copied += n;
        }
        first = last + 1;
    }
    if (copied == 0) {
        return std::string(text);
    }
    out.append(text.substr(copied));
    return out;
}

// The dots a word is cut up with (· • ‧ ∙ ⋅): syllables (dic·tion·ar·y), letters spelled out, or a disguise
bool is_word_dot(uint32_t cp) { return cp == 0xB7 || cp == 0x2022 || cp == 0x2027 || cp == 0x2219 || cp == 0x22C5; }

// Emoji, dingbats, arrows and geometric shapes, and the word dots: what the "emoji attack" on guard models puts
// inside words ("bo😊mb"). Dashes are not among them: "this—that" is ordinary prose.
bool is_pictograph(uint32_t cp) {
    return is_word_dot(cp) || (cp >= 0x2190 && cp <= 0x21FF) || (cp >= 0x2300 && cp <= 0x23FF) ||
           (cp >= 0x25A0 && cp <= 0x27BF) || (cp >= 0x2900 && cp <= 0x297F) || (cp >= 0x2B00 && cp <= 0x2BFF) ||
           (cp >= 0x1F000 && cp <= 0x1FAFF);
}

// Pictographs put inside words taken out, so that the words are read: a reader reads "bo😊mb an😊d" as "bomb and"
// while a subword tokenizer cuts each word in pieces (minilm, which reads an emoji as [UNK], scored 0.003 against
// 0.998 on a request so written). Where a run of them stands between two letters, every run that touches a letter is
// taken out ("G😊i😊v😊e😊 😊m😊e", "b0😊mb"); one between two letters stands for a space where it ends a word (a
// lower-case letter before, a capital after) or where the text has no space or line break of its own, unless it is dots
// ("Give😊me😊step", but "dic·tion·ar·y"). A text with no such run keeps its emoji: "I love it 😊", and digits keep
// their dots ("16·3"). Emoji that stand for a word stay wherever they are ("a💣"): the decoded reading reads them as
// their words.
std::string read_through_pictographs(std::string_view text) {
    struct run {
        size_t begin, end;
        bool dots;  // word dots only
    };
    std::vector<run> runs;
    size_t len = 0;
    for (size_t i = 0; i < text.size(); i += len) {
        const uint32_t cp = decode_valid_utf8(text, i, len);
        if (!is_pictograph(cp) || emoji_stands_for_word(cp)) {
            continue;  // an emoji that stands for a word is read as that word (lg::read_emoji_words)
        }
        if (!runs.empty() && runs.back().end == i) {
            runs.back().end = i + len;
            runs.back().dots = runs.back().dots && is_word_dot(cp);
        } else {
            runs.push_back({i, i + len, is_word_dot(cp)});
        }
    }
    const auto letter_at = [&](size_t i) {
        return i < text.size() && std::isalpha(static_cast<unsigned char>(text[i]));
    };
    const auto touches_letter = [&](const run & r) {
        return (r.begin > 0 && letter_at(r.begin - 1)) || letter_at(r.end);
    };
    const auto in_word = [&](const run & r) { return inside_word(text, r.begin, r.end); };
    if (std::none_of(runs.begin(), runs.end(), in_word)) {
        return std::string(text);
    }
    const bool spaced = text.find_first_of(" \n\r\t") != std::string_view::npos;
    std::string out;
    out.reserve(text.size());
    size_t copied = 0;
    for (const run & r : runs) {
        if (!touches_letter(r)) {
            continue;  // an emoji standing alone is left to the guard
        }
        out.append(text.substr(copied, r.begin - copied));
        // between a lower-case and a capital letter it ends a word ("#GetFiredUp🔥Get", "Israel•Reply•Share")
        const bool word_break = in_word(r) && std::islower(static_cast<unsigned char>(text[r.begin - 1])) &&
                                std::isupper(static_cast<unsigned char>(text[r.end]));
        if (word_break || (in_word(r) && !spaced && !r.dots)) {
            out.push_back(' ');
        }
        copied = r.end;
    }
    out.append(text.substr(copied));
    return out;
}

// Compatibility forms, invisible code points and look-alike letters.
std::string fold_characters(std::string_view text) {
    std::string folded;
    folded.reserve(text.size());
    size_t len = 0;
    for (size_t i = 0; i < text.size(); i += len) {
        const uint32_t cp = decode_valid_utf8(text, i, len);
        if (cp < 0x80) {
            folded.push_back(static_cast<char>(cp));
        } else if (cp >= k_first_ascii_tag && cp <= k_last_ascii_tag) {
            folded.push_back(static_cast<char>(cp - 0xE0000));
        } else if (const fold_entry * e = find_cp(fold_table, cp)) {
            folded.append(e->text);
        } else if (const look_alike * small = find_cp(small_capitals, cp)) {
            folded.push_back(small->latin);
        } else if (const cp_range * alphabet = range_of(capital_alphabets, cp)) {
            folded.push_back(static_cast<char>('A' + (cp - alphabet->first)));
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
        if (ends_word(decode_valid_utf8(all, i, len))) {
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

}  // namespace

bool is_ignorable(uint32_t cp) {
    return range_of(ignorable, cp) != nullptr;
}

std::string fold_text(std::string_view text) {
    const auto fold_once = [](std::string_view text) {
        return read_through_markup(join_spaced_letters(read_through_pictographs(fold_characters(text))));
    };
    // One pass can leave work for the next: a tag taken out completes another around it or joins a Cyrillic
    // look-alike to a Latin word; letters joined close an emphasis inside a word. Folded again until nothing changes,
    // the guard reads what a reader reads, and training rows read again by the runtime are read the same. After the
    // first pass a pass that changes the text shortens it, so this ends; a text built to need more passes than any
    // found in practice is read as folded so far.
    std::string folded = fold_once(text);
    for (int pass = 1; pass < k_max_fold_passes; ++pass) {
        std::string again = fold_once(folded);
        if (again == folded) {
            break;
        }
        folded = std::move(again);
    }
    return folded;
}

}  // namespace lg

#include "lg-decode.h"
#include "lg-text.h"

#include <cstdint>
#include <vector>

namespace {

struct turned_glyph {
    uint32_t cp;
    char letter;       // what it reads as, turned the right way up
    bool distinctive;  // drawn so only in turned text (ǝ, ʇ, ∀), not a letter or sign of its own in common use (ı, Λ)
};

// The glyphs flip-text generators turn letters, digits and marks into, sorted by code point. IPA and a few African
// alphabets use some of them (ɔ, ɹ, ʌ): such a word is read turned too, and the guard keeps the higher of its two
// readings, so a wrong turn costs nothing.
constexpr turned_glyph k_turned[] = {
    {0x00A1, '!', false},   {0x00BF, '?', false},   {0x0131, 'i', false},   {0x0183, 'g', true},
    {0x0186, 'C', true},    {0x018E, 'E', true},    {0x0190, '3', false},   {0x01DD, 'e', true},
    {0x0250, 'a', true},    {0x0254, 'c', true},    {0x025F, 'f', true},    {0x0265, 'h', true},
    {0x026F, 'm', true},    {0x0279, 'r', true},    {0x027E, 'j', true},    {0x0283, 'l', false},
    {0x0287, 't', true},    {0x028C, 'v', true},    {0x028D, 'w', true},    {0x028E, 'y', true},
    {0x029E, 'k', true},    {0x02D9, '.', false},   {0x02E5, 'L', true},    {0x039B, 'V', false},
    {0x03DB, '5', false},   {0x0500, 'P', true},    {0x1105, '2', false},   {0x15E1, 'D', true},
    {0x15FA, 'B', true},    {0x1D09, 'i', true},    {0x1D1A, 'R', true},    {0x1D77, 'g', true},
    {0x2132, 'F', true},    {0x2141, 'G', true},    {0x2142, 'L', true},    {0x2144, 'Y', true},
    {0x21C2, '1', false},   {0x2200, 'A', true},    {0x2229, 'U', true},    {0x22A5, 'T', true},
    {0x2C6F, 'A', true},    {0x3123, '4', false},   {0x3125, '7', false},   {0xA4D5, 'T', true},
    {0xA4D8, 'K', true},    {0xA4E5, 'V', true},    {0xA4E8, 'G', true},    {0xA4ED, 'B', true},
    {0xA4F5, 'U', true},    {0xA4F7, 'D', true},
};

const turned_glyph * find_turned(uint32_t cp) {
    for (const turned_glyph & g : k_turned) {
        if (g.cp == cp) {
            return &g;
        }
    }
    return nullptr;
}

// An ASCII character as it reads turned upside down: b q, d p, n u, M W, 6 9 and paired brackets change places,
// the comma and the apostrophe too; what a turn leaves alike (o, s, x, z, H, I, ...) or makes no letter of stays.
char turned_ascii(char c) {
    constexpr const char * k_pairs = "bqdpnuMW69()[]{}<>,'";
    for (const char * p = k_pairs; *p != '\0'; p += 2) {
        if (c == p[0]) {
            return p[1];
        }
        if (c == p[1]) {
            return p[0];
        }
    }
    return c;
}

// Whether an ASCII word reads as letters turned too, so that it belongs to a turned stretch it stands beside
// ("op" is "do", "I" is "I"): every letter of it turns into a letter
bool turns_into_letters(std::string_view word) {
    constexpr std::string_view k_turnable = "bdlnopqsuxzHINOSXZMW";
    for (const char c : word) {
        if (lg::is_ascii_letter(c) && k_turnable.find(c) == std::string_view::npos) {
            return false;
        }
    }
    return true;
}

struct word_span {
    size_t begin, end;
    size_t n_distinctive;  // distinctive turned glyphs in it; a word with any other non-ASCII letter has none
    bool turnable;         // ASCII only, and turns into letters
};

word_span scan_word(std::string_view text, size_t begin, size_t end) {
    word_span w{begin, end, 0, true};
    size_t len = 0;
    bool foreign = false;
    for (size_t i = begin; i < end; i += len) {
        const uint32_t cp = lg::decode_valid_utf8(text, i, len);
        if (cp < 0x80) {
            continue;
        }
        w.turnable = false;
        const turned_glyph * g = find_turned(cp);
        if (g == nullptr) {
            foreign = true;
        } else {
            w.n_distinctive += g->distinctive;
        }
    }
    if (foreign) {
        w.n_distinctive = 0;
    }
    w.turnable = w.turnable && turns_into_letters(text.substr(begin, end - begin));
    return w;
}

// text[begin, end) turned right way up: last character first, each read as its turn
void append_turned(std::string & out, std::string_view text, size_t begin, size_t end) {
    std::vector<std::pair<size_t, size_t>> chars;  // offset, length
    size_t len = 0;
    for (size_t i = begin; i < end; i += len) {
        lg::decode_valid_utf8(text, i, len);
        chars.emplace_back(i, len);
    }
    for (auto it = chars.rbegin(); it != chars.rend(); ++it) {
        if (it->second == 1) {
            out += turned_ascii(text[it->first]);
        } else if (const turned_glyph * g = find_turned(lg::decode_valid_utf8(text, it->first, len))) {
            out += g->letter;
        } else {
            out.append(text.substr(it->first, it->second));
        }
    }
}

// Fewer turned glyphs are a phonetic transcription or a kaomoji ("(ʘ‿ʘ)", "/ɹʌn/") as often as a message
constexpr size_t k_min_distinctive = 3;

}  // namespace

namespace lg {

std::optional<std::string> read_upside_down(std::string_view text) {
    if (text.size() < 2 * k_min_distinctive) {
        return std::nullopt;
    }
    std::vector<word_span> words;
    size_t n_distinctive = 0;
    for (size_t i = 0; i < text.size();) {
        if (is_ascii_space(text[i])) {
            ++i;
            continue;
        }
        size_t end = i;
        while (end < text.size() && !is_ascii_space(text[end])) {
            ++end;
        }
        words.push_back(scan_word(text, i, end));
        n_distinctive += words.back().n_distinctive;
        i = end;
    }
    if (n_distinctive < k_min_distinctive) {
        return std::nullopt;
    }
    const auto same_line = [&](size_t a, size_t b) {
        return text.substr(words[a].end, words[b].begin - words[a].end).find_first_of("\r\n") == std::string_view::npos;
    };
    std::string out;
    size_t copied = 0;
    for (size_t w = 0; w < words.size();) {
        if (words[w].n_distinctive == 0) {
            ++w;
            continue;
        }
        // a stretch: turned words and the turnable ASCII words among and beside them, within a line
        size_t first = w;
        size_t last = w;
        while (last + 1 < words.size() && same_line(last, last + 1) &&
               (words[last + 1].n_distinctive > 0 || words[last + 1].turnable)) {
            ++last;
        }
        while (first > 0 && words[first - 1].begin >= copied && same_line(first - 1, first) &&
               words[first - 1].turnable) {
            --first;
        }
        out.append(text.substr(copied, words[first].begin - copied));
        append_turned(out, text, words[first].begin, words[last].end);
        copied = words[last].end;
        w = last + 1;
    }
    out.append(text.substr(copied));
    return out;
}

}  // namespace lg

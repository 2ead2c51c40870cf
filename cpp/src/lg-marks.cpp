#include "lg-decode.h"
#include "lg-text.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// The blocks of combining marks that Zalgo text stacks on letters: Combining Diacritical Marks, their Extended and
// Supplement blocks, those for symbols and the half marks
bool is_combining_mark(uint32_t cp) {
    return (cp >= 0x0300 && cp <= 0x036F) || (cp >= 0x1AB0 && cp <= 0x1AFF) || (cp >= 0x1DC0 && cp <= 0x1DFF) ||
           (cp >= 0x20D0 && cp <= 0x20FF) || (cp >= 0xFE20 && cp <= 0xFE2F);
}

}  // namespace

namespace lg {

std::optional<std::string> read_stacked_marks(std::string_view text) {
    // every text is asked; an ASCII one holds no mark, and is answered without listing its words
    if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
        return std::nullopt;
    }
    struct word {
        size_t begin;
        size_t end;
        std::string letters;
        size_t n_marks;
        bool stacked() const { return n_marks >= letters.size(); }
    };
    std::vector<word> words;  // runs of ASCII letters and the marks that follow them
    size_t len = 0;
    for (size_t i = 0; i < text.size();) {
        if (!is_ascii_letter(text[i])) {
            decode_valid_utf8(text, i, len);
            i += len;
            continue;
        }
        word w{i, i, {}, 0};
        while (i < text.size()) {
            if (is_ascii_letter(text[i])) {
                w.letters += text[i++];
            } else if (is_combining_mark(decode_valid_utf8(text, i, len))) {
                ++w.n_marks;
                i += len;
            } else {
                break;
            }
        }
        w.end = i;
        words.push_back(std::move(w));
    }
    // Written languages put a mark on some letters of a word (NFD "café", "Việt"); Zalgo on every one. A text with
    // a word of two letters or more so marked is Zalgo, and its marked words of one letter ("a", "I") are too.
    if (std::none_of(words.begin(), words.end(), [](const word & w) { return w.letters.size() >= 2 && w.stacked(); })) {
        return std::nullopt;
    }
    std::string out;
    size_t copied = 0;  // text[0, copied) is in out
    for (const word & w : words) {
        if (w.n_marks > 0 && w.stacked()) {
            out.append(text.substr(copied, w.begin - copied));
            out += w.letters;
            copied = w.end;
        }
    }
    out.append(text.substr(copied));
    return out;
}

}  // namespace lg

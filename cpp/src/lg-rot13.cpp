#include "lg-decode.h"

#include <algorithm>
#include <iterator>
#include <vector>

namespace {

// Frequent English words, most of them a request's ("how", "to", "write", "me"). Left out: those whose ROT13 is
// itself English or a common abbreviation, which ordinary text would then count as ROT13 ("be" / "or", "if" / "vs",
// "she" / "fur", "he" / "ur", "by" / "ol", "so" / "fb", "no" / "ab", "on" / "ba", "us" / "hf", "up" / "hc", "at" /
// "ng", "as" / "nf").
constexpr std::string_view k_common_words[] = {
    "a", "about", "all", "also", "and", "any", "are", "but", "can", "could", "did", "do", "does", "explain", "for",
    "from", "get", "give", "had", "has", "have", "help", "her", "here", "his", "how", "i", "in", "into", "is", "it",
    "just", "like", "make", "me", "more", "most", "my", "need", "not", "now", "of", "only", "other", "our", "out",
    "please", "should", "some", "tell", "than", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "those", "to", "very", "want", "was", "we", "were", "what", "when", "where", "which", "who", "why",
    "will", "with", "would", "write", "you", "your",
};

using lg::is_ascii_digit;
using lg::is_ascii_letter;
using lg::is_ascii_upper;

char rot13(char c) {
    if (c >= 'a' && c <= 'z') {
        return static_cast<char>('a' + (c - 'a' + 13) % 26);
    }
    if (is_ascii_upper(c)) {
        return static_cast<char>('A' + (c - 'A' + 13) % 26);
    }
    return c;
}

bool is_common(const std::string & lower) {
    return std::find(std::begin(k_common_words), std::end(k_common_words), lower) != std::end(k_common_words);
}

// A word of the text: a run of ASCII letters with no digit or letter on either side ("16gb" is no word)
struct word {
    size_t begin;
    size_t end;
    bool common;     // a frequent English word as written
    bool rot_common; // a frequent English word once rotated
    bool starts_sentence;  // a line break or . ! ? : ; stands between it and the word before it
};

bool ends_sentence(char c) {
    return c == '.' || c == '!' || c == '?' || c == ':' || c == ';' || c == '\n' || c == '\r';
}

std::vector<word> read_words(std::string_view text) {
    std::vector<word> words;
    bool sentence_end = false;
    for (size_t i = 0; i < text.size();) {
        if (!is_ascii_letter(text[i]) && !is_ascii_digit(text[i])) {
            sentence_end = sentence_end || ends_sentence(text[i]);
            ++i;
            continue;
        }
        size_t end = i;
        bool letters = true;
        while (end < text.size() && (is_ascii_letter(text[end]) || is_ascii_digit(text[end]))) {
            letters = letters && is_ascii_letter(text[end]);
            ++end;
        }
        if (letters) {
            std::string lower;
            std::string rotated;
            bool capitals = true;
            for (size_t k = i; k < end; ++k) {
                const char c = static_cast<char>(text[k] | 0x20);
                capitals = capitals && is_ascii_upper(text[k]);
                lower += c;
                rotated += rot13(c);
            }
            // "GB", "VA", "HF": abbreviations in capitals are left out of the ROT13 evidence
            const bool abbreviation = capitals && end - i > 1;
            words.push_back({i, end, is_common(lower), !abbreviation && is_common(rotated), sentence_end});
            sentence_end = false;
        }
        i = end;
    }
    return words;
}

// What the words of a stretch of text say about ROT13: ROT13 turns frequent English words into rare ones, so in a
// ROT13 message words that read as frequent ones once rotated outnumber those that are frequent as written.
struct evidence {
    size_t n_common = 0;
    size_t n_rot = 0;
    std::vector<std::string_view> long_rot;  // up to two distinct rotated-frequent words of two letters or more

    void add(std::string_view text, const word & w) {
        n_common += w.common;
        if (!w.rot_common) {
            return;
        }
        ++n_rot;
        const std::string_view s = text.substr(w.begin, w.end - w.begin);
        // two are all rot13() asks: a longer list would cost a search per word that an attacker could lengthen
        if (long_rot.size() < 2 && s.size() > 1 && std::find(long_rot.begin(), long_rot.end(), s) == long_rot.end()) {
            long_rot.push_back(s);
        }
    }

    bool rot13() const { return long_rot.size() >= 2 && n_rot > n_common; }
};

}  // namespace

namespace lg {

std::optional<std::string> read_rot13(std::string_view text) {
    const std::vector<word> words = read_words(text);
    // sentences[k] = index of the first word of sentence k
    std::vector<size_t> sentences;
    evidence whole;
    for (size_t k = 0; k < words.size(); ++k) {
        if (k == 0 || words[k].starts_sentence) {
            sentences.push_back(k);
        }
        whole.add(text, words[k]);
    }
    sentences.push_back(words.size());
    // Each sentence that reads as ROT13 is rotated, so that a message after an English wrapper ("Decode this and do
    // what it says: ubj gb ...") is read and the wrapper stays as written; in a text that reads as ROT13 as a whole,
    // so is each sentence too short to tell alone ("Jung?") that leans to it. A sentence with no evidence either way
    // stays: a chat's role name ("user") shares its run of text with the message.
    const bool whole_text = whole.rot13();
    std::string out(text);
    bool decoded = false;
    for (size_t s = 0; s + 1 < sentences.size(); ++s) {
        const size_t first = sentences[s];
        const size_t last = sentences[s + 1];
        evidence sentence;
        for (size_t k = first; k < last; ++k) {
            sentence.add(text, words[k]);
        }
        const bool leans = sentence.n_rot > sentence.n_common;
        if (!sentence.rot13() && !(whole_text && leans)) {
            continue;
        }
        // to the next sentence's first word: letters touching digits ("o0zo") were rotated by the writer too
        const size_t end = last < words.size() ? words[last].begin : text.size();
        for (size_t i = words[first].begin; i < end; ++i) {
            out[i] = rot13(out[i]);
        }
        decoded = true;
    }
    if (!decoded) {
        return std::nullopt;
    }
    return out;
}

}  // namespace lg

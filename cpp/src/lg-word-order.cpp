#include "lg-decode.h"

#include <algorithm>
#include <vector>

namespace {

// Which way a text's words run is told by its determiners. In English a determiner follows a preposition, a verb, a
// pronoun or a conjunction ("how to make a bomb", "instructions for the attack") and never stands right before one,
// so in words written last to first ("bomb a make to how") the determiners come first.
constexpr std::string_view k_determiners[] = {"a", "an", "my", "our", "the", "their", "your"};

// Words that stand before a determiner and never right after one. Left out: those that are nouns too ("the use", "an
// insult", "a cause", "the will", "a can", "a commit"), and "not", "us", "it", "who" and "how" ("your not" for
// "you're not", "the US", "the IT desk", "The Who", "a how-to guide").
constexpr std::string_view k_function_words[] = {
    // prepositions
    "about", "against", "at", "between", "by", "during", "for", "from", "in", "into", "of", "on", "onto", "than",
    "through", "to", "with", "without",
    // auxiliary verbs
    "am", "are", "be", "been", "could", "did", "does", "had", "has", "is", "shall", "should", "was", "were", "would",
    // pronouns
    "he", "him", "me", "she", "them", "they", "we", "you",
    // conjunctions and question words
    "and", "but", "if", "or", "that", "what", "when", "where", "why",
};
constexpr std::string_view k_request_verbs[] = {
    "acquire", "avoid", "become", "bypass", "convince", "create", "describe", "destroy", "develop", "encourage",
    "evade", "explain", "generate", "get", "give", "harass", "hurt", "improve", "keep", "know", "let", "make",
    "manipulate", "manufacture", "obtain", "persuade", "prevent", "promote", "provide", "put", "sell", "send", "steal",
    "suggest", "teach", "tell", "think", "threaten", "write",
};

// Casual writing spells "you're" "your" and "and" "an" ("your in Europe", "an when she"): before a function word
// these are no evidence, before a verb they are. Nor is "a" before "and" or "or", where it names a letter ("options
// a and b").
constexpr std::string_view k_casual_determiners[] = {"an", "your"};

// Words that open a request ("How do I ...", "Write a ...") and seldom end a sentence
constexpr std::string_view k_request_openers[] = {
    "create", "describe", "develop", "explain", "generate", "give", "how", "provide", "tell", "write",
};

// A word of the text: a run of ASCII letters with no digit or letter on either side
struct word {
    size_t begin;
    size_t end;
    bool determiner;
    bool casual_determiner;
    bool function_word;
    bool request_verb;
    bool opens_request;
    bool capital;  // its first letter
    bool title;    // a capital followed by small letters, or "I": not an abbreviation ("FBI")
    bool how;
    bool to;
    bool letter_a;     // "a", which can name a letter
    bool and_or;
    bool starts_segment;  // a line break or . ! ? : ; stands between it and the word before it
    bool follows_closely;  // only spaces stand between it and the word before it
};

template <size_t N> bool listed(std::string_view lower, const std::string_view (&list)[N]) {
    return std::find(std::begin(list), std::end(list), lower) != std::end(list);
}

std::vector<word> read_words(std::string_view text) {
    constexpr size_t k_longest_listed = 11;  // "manufacture"
    std::vector<word> words;
    bool segment_end = false;
    bool close = false;
    for (size_t i = 0; i < text.size();) {
        if (!lg::is_ascii_alnum(text[i])) {
            segment_end = segment_end || lg::ends_sentence(text[i]);
            close = close && text[i] == ' ';
            ++i;
            continue;
        }
        size_t end = i;
        bool letters = true;
        while (end < text.size() && lg::is_ascii_alnum(text[end])) {
            letters = letters && lg::is_ascii_letter(text[end]);
            ++end;
        }
        if (letters) {
            std::string lower;
            if (end - i <= k_longest_listed) {
                lower.assign(text.substr(i, end - i));
                std::transform(lower.begin(), lower.end(), lower.begin(), lg::to_ascii_lower);
            }
            words.push_back({i, end, listed(lower, k_determiners), listed(lower, k_casual_determiners),
                             listed(lower, k_function_words), listed(lower, k_request_verbs),
                             listed(lower, k_request_openers), lg::is_ascii_upper(text[i]),
                             lg::is_ascii_upper(text[i]) && (end - i == 1 || !lg::is_ascii_upper(text[i + 1])),
                             lower == "how", lower == "to", lower == "a", lower == "and" || lower == "or", segment_end,
                             close && !segment_end});
            segment_end = false;
        }
        close = letters;
        i = end;
    }
    return words;
}

// A stretch of text between two sentence ends (or line breaks): its words, and which way they lean
struct segment {
    size_t first;  // index of its first word
    size_t last;   // one past its last word
    lg::word_order_evidence evidence;
    bool backward() const { return evidence.backward > evidence.forward; }
    bool forward() const { return evidence.forward > evidence.backward; }
};

// by_capitals: count the capitals that open and end the sentence too. They tell which of two readings of one text
// runs forward, but not whether a text as written does: casual writing opens sentences in small letters and ends
// them on names ("i miss you Sarah").
lg::word_order_evidence weigh(const std::vector<word> & words, size_t first, size_t last, bool by_capitals) {
    lg::word_order_evidence e;
    for (size_t k = first + 1; k < last; ++k) {
        const word & before = words[k - 1];
        const word & after = words[k];
        if (!after.follows_closely) {
            continue;
        }
        e.forward += ((before.function_word || before.request_verb) && after.determiner) + (before.how && after.to);
        e.backward += before.determiner && (after.request_verb || (after.function_word && !before.casual_determiner &&
                                                                   !(before.letter_a && after.and_or)));
        // "How to ..." opens requests; "to how" ends a sentence only so turned ("the answer to how many" does not)
        e.backward += before.to && after.how && k + 1 == last;
    }
    // A sentence opens with a capital; one written last to first ends with it. Names fall either way.
    if (by_capitals && last - first >= 2) {
        e.forward += words[first].title;
        e.backward += words[last - 1].title;
    }
    // "How ... ?" and "Write ..." open requests; a sentence of three words or more seldom ends on them, and
    // never with the capital that opened it ("Care to explain?", "Time will tell!")
    if (last - first >= 3) {
        e.forward += words[first].opens_request;
        e.backward += words[last - 1].opens_request && words[last - 1].capital;
    }
    return e;
}

std::vector<segment> read_segments(const std::vector<word> & words, bool by_capitals) {
    std::vector<segment> segments;
    for (size_t k = 0; k < words.size(); ++k) {
        if (k == 0 || words[k].starts_segment) {
            segments.push_back({k, k + 1, {}});
        } else {
            segments.back().last = k + 1;
        }
    }
    for (segment & s : segments) {
        s.evidence = weigh(words, s.first, s.last, by_capitals);
    }
    return segments;
}

bool may_run_backward(const std::vector<segment> & segments) {
    lg::word_order_evidence total;
    for (const segment & s : segments) {
        total.forward += s.evidence.forward;
        total.backward += s.evidence.backward;
    }
    return total.backward > 0 && total.backward >= total.forward;
}

// text[begin, end) with its words (runs of other bytes than spaces) in reverse order, the spaces where they were
void reverse_word_order(std::string & text, size_t begin, size_t end) {
    std::vector<std::string_view> pieces;  // the words (runs of other bytes than spaces) and the spaces between them
    const std::string_view span = std::string_view(text).substr(begin, end - begin);
    for (size_t i = 0; i < span.size();) {
        const bool space = lg::is_ascii_space(span[i]);
        size_t j = i;
        while (j < span.size() && lg::is_ascii_space(span[j]) == space) {
            ++j;
        }
        pieces.push_back(span.substr(i, j - i));
        i = j;
    }
    // the spaces keep their places, the words swap round them
    std::vector<std::string_view> words;
    for (const std::string_view p : pieces) {
        if (!lg::is_ascii_space(p[0])) {
            words.push_back(p);
        }
    }
    std::string out;
    out.reserve(span.size());
    auto next_word = words.rbegin();
    for (const std::string_view p : pieces) {
        out += lg::is_ascii_space(p[0]) ? p : *next_word++;
    }
    text.replace(begin, end - begin, out);
}

}  // namespace

namespace lg {

word_order_evidence word_order_of(std::string_view text) {
    word_order_evidence total;
    const std::vector<word> words = read_words(text);
    for (const segment & s : read_segments(words, /*by_capitals=*/true)) {
        total.forward += s.evidence.forward;
        total.backward += s.evidence.backward;
    }
    return total;
}

std::optional<std::string> read_word_order(std::string_view text) {
    const std::vector<word> words = read_words(text);
    const std::vector<segment> segments = read_segments(words, /*by_capitals=*/false);
    // A text that leans forward as a whole stays as written: English sentences now and then hold a backward-looking
    // pair ("options a and b", "a to z"), and a request turned round is read on its own line (lg::text_lines).
    if (!may_run_backward(segments)) {
        return std::nullopt;
    }
    // Each run of segments within a line that holds a backward one and no forward one is turned round whole: a
    // request's end mark, written last to first, heads the first segment ("bomb? a make to how") and goes back to
    // its end with it.
    const auto line_break_before = [&](size_t s) {
        const size_t gap_begin = words[segments[s - 1].last - 1].end;
        const size_t gap_end = words[segments[s].first].begin;
        return text.substr(gap_begin, gap_end - gap_begin).find_first_of("\n\r") != std::string_view::npos;
    };
    std::string out(text);
    bool reordered = false;
    for (size_t s = 0; s < segments.size();) {
        size_t run_end = s;
        bool backward = false;
        while (run_end < segments.size() && !segments[run_end].forward() &&
               (run_end == s || !line_break_before(run_end))) {
            backward = backward || segments[run_end].backward();
            ++run_end;
        }
        if (run_end == s) {
            ++s;
            continue;
        }
        if (backward) {
            // from the start of the run's first word's piece of text to the end of its last one's
            size_t begin = words[segments[s].first].begin;
            while (begin > 0 && !is_ascii_space(text[begin - 1])) {
                --begin;
            }
            size_t end = words[segments[run_end - 1].last - 1].end;
            while (end < text.size() && !is_ascii_space(text[end])) {
                ++end;
            }
            reverse_word_order(out, begin, end);
            reordered = true;
        }
        s = run_end;
    }
    // Turned round, the text must read forward: marks move with the words they touch, so a stretch of odd words can
    // lean backward either way, and a reading must leave nothing more to read
    if (!reordered || may_run_backward(read_segments(read_words(out), /*by_capitals=*/false))) {
        return std::nullopt;
    }
    return out;
}

}  // namespace lg

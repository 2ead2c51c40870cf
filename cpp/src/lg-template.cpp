#include "lg-template.h"

#include "lg-model.h"

#include <algorithm>
#include <cctype>
#include <utility>

namespace lg {

namespace {

constexpr std::string_view k_prompt = "{prompt}";
constexpr std::string_view k_response = "{response}";

struct special_token {
    llama_token id;
    std::string text;
    llama_token_attr attr;
};

// The tokens llama.cpp matches as text when parse_special is on (its special-token cache), longest first as it
// matches them, restricted to those spelled in one of the template's literal texts.
std::vector<special_token> specials_in(const llama_vocab * vocab, const std::vector<std::string_view> & literals) {
    std::vector<special_token> found;
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    for (llama_token id = 0; id < n_vocab; ++id) {
        const llama_token_attr attr = llama_vocab_get_attr(vocab, id);
        if (!(attr & (LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_USER_DEFINED | LLAMA_TOKEN_ATTR_UNKNOWN))) {
            continue;
        }
        const char * text = llama_vocab_get_text(vocab, id);
        if (text && *text &&
            std::any_of(literals.begin(), literals.end(),
                        [&](std::string_view literal) { return literal.find(text) != std::string_view::npos; })) {
            found.push_back({id, text, attr});
        }
    }
    std::stable_sort(found.begin(), found.end(),
                     [](const special_token & a, const special_token & b) { return a.text.size() > b.text.size(); });
    return found;
}

void strip_trailing_space(std::string & s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
        s.pop_back();
    }
}

void strip_leading_space(std::string & s) {
    size_t n = 0;
    while (n < s.size() && std::isspace(static_cast<unsigned char>(s[n]))) {
        ++n;
    }
    s.erase(0, n);
}

}  // namespace

guard_template::guard_template(const llama_vocab * vocab_, const std::string & text, bool parse_special_)
    : vocab(vocab_), parse_special(parse_special_) {
    size_t i = 0;
    size_t literal_start = 0;
    const auto close_literal = [&](size_t end) {
        if (end > literal_start) {
            parts.push_back({part::kind::text, text.substr(literal_start, end - literal_start)});
        }
    };
    while (i < text.size()) {
        const std::string_view rest = std::string_view(text).substr(i);
        if (rest.substr(0, k_prompt.size()) == k_prompt) {
            close_literal(i);
            parts.push_back({part::kind::prompt});
            i += k_prompt.size();
            literal_start = i;
        } else if (rest.substr(0, k_response.size()) == k_response) {
            close_literal(i);
            parts.push_back({part::kind::response});
            i += k_response.size();
            literal_start = i;
        } else {
            ++i;
        }
    }
    close_literal(text.size());
    if (!parse_special) {
        return;
    }

    // Split the template's own text at its special tokens, as llama.cpp's tokenizer partitions a string.
    const std::vector<special_token> specials = [&] {
        std::vector<std::string_view> literals;
        for (const part & p : parts) {
            if (p.what == part::kind::text) {
                literals.push_back(p.text);
            }
        }
        return specials_in(vocab, literals);
    }();
    for (const special_token & special : specials) {
        std::vector<part> split;
        for (part & p : parts) {
            if (p.what != part::kind::text) {
                split.push_back(std::move(p));
                continue;
            }
            size_t from = 0;
            for (size_t at; (at = p.text.find(special.text, from)) != std::string::npos; from = at + special.text.size()) {
                if (at > from) {
                    split.push_back({part::kind::text, p.text.substr(from, at - from)});
                }
                part token{part::kind::token};
                token.token = special.id;
                token.strip_space_before = special.attr & LLAMA_TOKEN_ATTR_LSTRIP;
                token.strip_space_after = special.attr & LLAMA_TOKEN_ATTR_RSTRIP;
                split.push_back(std::move(token));
            }
            if (from < p.text.size()) {
                split.push_back({part::kind::text, p.text.substr(from)});
            }
        }
        parts = std::move(split);
    }

    // What add_special frames a text with, read off the tokenizer itself (BOS; CLS and SEP; EOS where the
    // vocabulary adds one).
    const std::vector<llama_token> framed = lg::tokenize(vocab, "a", /*add_special=*/true, /*parse_special=*/false);
    const std::vector<llama_token> bare = lg::tokenize(vocab, "a", /*add_special=*/false, /*parse_special=*/false);
    const auto body = std::search(framed.begin(), framed.end(), bare.begin(), bare.end());
    head.assign(framed.begin(), body);
    tail.assign(body == framed.end() ? body : body + static_cast<long>(bare.size()), framed.end());
}

std::vector<llama_token> guard_template::tokenize(std::string_view prompt, std::string_view response) const {
    const auto fill = [&](const part & p) -> std::string_view {
        switch (p.what) {
            case part::kind::prompt: return prompt;
            case part::kind::response: return response;
            default: return p.text;
        }
    };
    if (!parse_special) {
        std::string rendered;
        for (const part & p : parts) {
            rendered += fill(p);
        }
        return lg::tokenize(vocab, rendered, /*add_special=*/true, /*parse_special=*/false);
    }

    std::vector<llama_token> tokens = head;
    std::string run;  // plain text between two of the template's special tokens
    bool strip_run_start = false;
    const auto flush_run = [&](bool strip_end) {
        if (strip_run_start) {
            strip_leading_space(run);
        }
        if (strip_end) {
            strip_trailing_space(run);
        }
        if (!run.empty()) {
            const std::vector<llama_token> ids = lg::tokenize(vocab, run, /*add_special=*/false, /*parse_special=*/false);
            tokens.insert(tokens.end(), ids.begin(), ids.end());
        }
        run.clear();
    };
    for (const part & p : parts) {
        if (p.what == part::kind::token) {
            flush_run(p.strip_space_before);
            tokens.push_back(p.token);
            strip_run_start = p.strip_space_after;
        } else {
            run += fill(p);
        }
    }
    flush_run(false);
    tokens.insert(tokens.end(), tail.begin(), tail.end());
    return tokens;
}

}  // namespace lg

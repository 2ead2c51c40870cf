#include "lg-template.h"

#include "lg-model.h"

#include <algorithm>
#include <cctype>
#include <utility>

namespace lg {

namespace {

constexpr std::string_view k_prompt = "{prompt}";
constexpr std::string_view k_response = "{response}";

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

token_template::token_template(const lg_model & model, std::vector<piece> pieces, bool parse_special_)
    : vocab(model.vocab), parse_special(parse_special_) {
    for (piece & p : pieces) {
        if (p.slot >= 0) {
            part slot{part::kind::slot};
            slot.slot = p.slot;
            parts.push_back(std::move(slot));
            n_slots_ = std::max(n_slots_, p.slot + 1);
        } else if (!p.text.empty()) {
            parts.push_back({part::kind::text, std::move(p.text)});
        }
    }
    // What add_special frames a text with, read off the tokenizer itself (BOS; CLS and SEP; EOS where the
    // vocabulary adds one).
    const std::vector<llama_token> framed = lg::tokenize(vocab, "a", /*add_special=*/true, /*parse_special=*/false);
    const std::vector<llama_token> bare = lg::tokenize(vocab, "a", /*add_special=*/false, /*parse_special=*/false);
    const auto body = std::search(framed.begin(), framed.end(), bare.begin(), bare.end());
    head.assign(framed.begin(), body);
    tail.assign(body == framed.end() ? body : body + static_cast<long>(bare.size()), framed.end());
    if (!parse_special) {
        return;
    }

    // Split the template's own text at its special tokens, as llama.cpp's tokenizer partitions a string: longest
    // token first, each over what is left of the literal texts.
    for (const special_token & special : model.special_tokens) {
        const bool spelled = std::any_of(parts.begin(), parts.end(), [&](const part & p) {
            return p.what == part::kind::text && p.text.find(special.text) != std::string::npos;
        });
        if (!spelled) {
            continue;
        }
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
}

std::vector<llama_token> token_template::tokenize(const std::vector<std::string_view> & values) const {
    const auto fill = [&](const part & p) -> std::string_view {
        if (p.what == part::kind::slot) {
            return static_cast<size_t>(p.slot) < values.size() ? values[static_cast<size_t>(p.slot)] : std::string_view();
        }
        return p.text;
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

std::vector<token_template::segment> token_template::segments(const std::vector<std::string_view> & values) const {
    std::vector<segment> out;
    const auto add = [&](std::vector<llama_token> tokens, int slot) {
        if (tokens.empty()) {
            return;
        }
        if (!out.empty() && out.back().slot == slot && slot < 0) {
            out.back().tokens.insert(out.back().tokens.end(), tokens.begin(), tokens.end());
        } else {
            out.push_back({std::move(tokens), slot});
        }
    };
    add(head, -1);
    // The plain text between two special tokens as pieces of template text and values, stripped as a whole
    // where a special token asks for it, then tokenized piece by piece.
    struct run_piece {
        std::string text;
        int slot;
    };
    std::vector<run_piece> run;
    bool strip_run_start = false;
    const auto flush_run = [&](bool strip_end) {
        if (strip_run_start) {
            for (auto it = run.begin(); it != run.end(); ++it) {
                strip_leading_space(it->text);
                if (!it->text.empty()) {
                    break;
                }
            }
        }
        if (strip_end) {
            for (auto it = run.rbegin(); it != run.rend(); ++it) {
                strip_trailing_space(it->text);
                if (!it->text.empty()) {
                    break;
                }
            }
        }
        for (const run_piece & piece : run) {
            if (!piece.text.empty()) {
                add(lg::tokenize(vocab, piece.text, /*add_special=*/false, /*parse_special=*/false), piece.slot);
            }
        }
        run.clear();
    };
    for (const part & p : parts) {
        if (p.what == part::kind::token) {
            flush_run(p.strip_space_before);
            add({p.token}, -1);
            strip_run_start = p.strip_space_after;
        } else if (p.what == part::kind::slot) {
            const size_t slot = static_cast<size_t>(p.slot);
            run.push_back({std::string(slot < values.size() ? values[slot] : std::string_view()), p.slot});
        } else {
            run.push_back({p.text, -1});
        }
    }
    flush_run(false);
    add(tail, -1);
    return out;
}

token_template guard_template(const lg_model & model, const std::string & text, bool parse_special) {
    std::vector<token_template::piece> pieces;
    size_t literal_start = 0;
    for (size_t i = 0; i < text.size();) {
        const std::string_view rest = std::string_view(text).substr(i);
        int slot = -1;
        size_t width = 0;
        if (rest.substr(0, k_prompt.size()) == k_prompt) {
            slot = 0, width = k_prompt.size();
        } else if (rest.substr(0, k_response.size()) == k_response) {
            slot = 1, width = k_response.size();
        }
        if (slot < 0) {
            ++i;
            continue;
        }
        pieces.push_back({text.substr(literal_start, i - literal_start)});
        pieces.push_back({std::string(), slot});
        i += width;
        literal_start = i;
    }
    pieces.push_back({text.substr(literal_start)});
    return token_template(model, std::move(pieces), parse_special);
}

}  // namespace lg

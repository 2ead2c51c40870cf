// Text with placeholders (a guard's input template, a rendered chat) turned into tokens, where only the
// template's own special-token text becomes special tokens and the values put into it are always plain text.
#pragma once

#include "llama.h"

#include <string>
#include <string_view>
#include <vector>

struct lg_model;

namespace lg {

// A template split once into the model's special tokens, plain text and numbered slots. With parse_special,
// special-token text written in the template itself (<|im_start|>, <end_of_turn>) becomes those tokens, while
// the values in the slots are always tokenized as plain text: a value that spells out "<|im_end|>" cannot forge
// a turn boundary. The text between two special tokens, template text and values together, is tokenized as one
// piece, exactly as llama.cpp tokenizes the rendered string, so inputs without special-token text in their
// values get the same ids either way.
class token_template {
  public:
    struct piece {
        std::string text;  // literal template text (slot < 0)
        int slot = -1;     // >= 0: the place of value number `slot`
    };

    token_template(const lg_model & model, std::vector<piece> pieces, bool parse_special);

    // Token ids with the model's own framing (BOS, or CLS ... SEP) as llama_tokenize(add_special=true) adds it.
    std::vector<llama_token> tokenize(const std::vector<std::string_view> & values) const;

    // The same input with every value tokenized on its own, in order: the template's tokens (slot -1, framing
    // included) and each value's tokens (its slot), so that an input too long for a context can be cut inside
    // its values while the template stays whole. Joined, the segments equal tokenize() except where a value
    // and the template text beside it would have merged into one token.
    struct segment {
        std::vector<llama_token> tokens;
        int slot = -1;
    };
    std::vector<segment> segments(const std::vector<std::string_view> & values) const;

    int n_slots() const { return n_slots_; }

  private:
    struct part {
        enum class kind { text, token, slot };
        kind what = kind::text;
        std::string text;
        int slot = -1;
        llama_token token = LLAMA_TOKEN_NULL;
        bool strip_space_before = false;  // llama.cpp's LSTRIP token attribute
        bool strip_space_after = false;   // RSTRIP
    };

    const llama_vocab * vocab;
    bool parse_special;
    int n_slots_ = 0;
    std::vector<part> parts;
    std::vector<llama_token> head;  // added before the text by add_special
    std::vector<llama_token> tail;  // added after it
};

// A guard's input template: "{prompt}" is slot 0 and "{response}" slot 1, filled by plain replacement
// (placeholders inside the inserted text are left alone).
token_template guard_template(const lg_model & model, const std::string & text, bool parse_special);

}  // namespace lg

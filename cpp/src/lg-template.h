// Guard input templates: the user's prompt (and response) placed in the text the guard was trained on, as tokens.
#pragma once

#include "llama.h"

#include <string>
#include <string_view>
#include <vector>

namespace lg {

// A guard template split once into the model's special tokens and plain text. With parse_special, special-token
// text written in the template itself (<|im_start|>, <end_of_turn>) becomes those tokens, while the user's text is
// always tokenized as plain text: a prompt that spells out "<|im_end|>" cannot forge a turn boundary in the
// guard's input. The text between two special tokens is tokenized as one piece, exactly as llama.cpp tokenizes
// the rendered string, so inputs without special-token text get the same ids either way.
// {prompt} and {response} are filled by plain replacement: placeholders inside the inserted text are left alone.
class guard_template {
  public:
    guard_template(const llama_vocab * vocab, const std::string & text, bool parse_special);

    // Token ids with the model's own framing (BOS, or CLS ... SEP) as llama_tokenize(add_special=true) adds it.
    std::vector<llama_token> tokenize(std::string_view prompt, std::string_view response) const;

  private:
    struct part {
        enum class kind { text, token, prompt, response };
        kind what = kind::text;
        std::string text;
        llama_token token = LLAMA_TOKEN_NULL;
        bool strip_space_before = false;  // llama.cpp's LSTRIP token attribute
        bool strip_space_after = false;   // RSTRIP
    };

    const llama_vocab * vocab;
    bool parse_special;
    std::vector<part> parts;
    std::vector<llama_token> head;  // added before the text by add_special
    std::vector<llama_token> tail;  // added after it
};

}  // namespace lg

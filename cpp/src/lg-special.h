// The special tokens a vocabulary lets llama.cpp's tokenizer match as text.
#pragma once

#include "llama.h"

#include <string>
#include <vector>

namespace lg {

struct special_token {
    llama_token id;
    std::string text;
    llama_token_attr attr;
};

// Control, user-defined and unknown tokens: those llama.cpp's tokenizer matches as text when parse_special is on,
// and that split text into pieces tokenized apart.
bool is_special(const llama_vocab * vocab, llama_token id);

// Control, user-defined and unknown tokens that have a text, longest first (the order llama.cpp matches them in).
std::vector<special_token> special_tokens_of(const llama_vocab * vocab);

}  // namespace lg

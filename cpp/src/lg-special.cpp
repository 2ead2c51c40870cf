#include "lg-special.h"

#include <algorithm>

namespace lg {

bool is_special(const llama_vocab * vocab, llama_token id) {
    return (llama_vocab_get_attr(vocab, id) &
            (LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_USER_DEFINED | LLAMA_TOKEN_ATTR_UNKNOWN)) != 0;
}

std::vector<special_token> special_tokens_of(const llama_vocab * vocab) {
    std::vector<special_token> found;
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    for (llama_token id = 0; id < n_vocab; ++id) {
        if (!is_special(vocab, id)) {
            continue;
        }
        const char * text = llama_vocab_get_text(vocab, id);
        if (text && *text) {
            found.push_back({id, text, llama_vocab_get_attr(vocab, id)});
        }
    }
    std::stable_sort(found.begin(), found.end(),
                     [](const special_token & a, const special_token & b) { return a.text.size() > b.text.size(); });
    return found;
}

}  // namespace lg

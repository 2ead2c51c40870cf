// Activated LoRA (aLoRA): the guard's adapter applies only from its invocation tokens on (PEFT's semantics: from
// the first invocation token, not the token before it as llama-server does). llama.cpp has no per-token adapter
// mask, so the invocation runs in a decode of its own with the adapter set, after a prefix decoded without it:
// in the guard's own context (standalone classify) or in the chat's, where the prefix is the conversation the
// chat already read (lg-chat-guard.cpp).
#include "lg-guard.h"

#include "lg-error.h"

#include <algorithm>

void lg_guard::set_adapter(llama_context * target, bool on) const {
    llama_adapter_lora * adapters[] = {adapter};
    float scales[] = {1.0f};
    if (llama_set_adapters_lora(target, on ? adapters : nullptr, on ? 1 : 0, on ? scales : nullptr) != 0) {
        lg::fail(LG_ERR_BACKEND, std::string("llama.cpp could not ") + (on ? "attach" : "detach") + " the guard adapter");
    }
}

void lg_guard::invoke(llama_context * target, llama_batch & b, const std::vector<llama_pos> & starts,
                      lg::hidden_capture & cap) const {
    const std::vector<llama_token> & ids = spec.invocation;
    const size_t n_total = starts.size() * ids.size();
    // In decodes of at most the context's n_batch tokens (llama.cpp asserts on more): a chat made with a small
    // n_batch reads the invocation in several, all with the adapter set, only the last token of each an output.
    const size_t n_batch = llama_n_batch(target);
    set_adapter(target, true);
    cap.reset();
    for (size_t begin = 0; begin < n_total; begin += n_batch) {
        const size_t end = std::min(n_total, begin + n_batch);
        b.n_tokens = 0;
        for (size_t i = begin; i < end; ++i) {
            const size_t s = i / ids.size();
            const size_t p = i % ids.size();
            const int32_t k = b.n_tokens++;
            b.token[k] = ids[p];
            b.pos[k] = starts[s] + static_cast<llama_pos>(p);
            b.n_seq_id[k] = 1;
            b.seq_id[k][0] = static_cast<llama_seq_id>(s);
            b.logits[k] = p + 1 == ids.size();
        }
        const int32_t rc = llama_decode(target, b);
        if (rc != 0) {
            lg::fail(LG_ERR_BACKEND, "llama.cpp decode of the guard's invocation failed (" + std::to_string(rc) + ")");
        }
    }
    lg::check_captured(cap, starts.size(), model.architecture);
}

#include "lg-chat.h"

#include "lg-error.h"
#include "lg-text.h"
#include "lg-threads.h"

#include <algorithm>
#include <memory>

namespace {

struct sampler_deleter {
    void operator()(llama_sampler * s) const { llama_sampler_free(s); }
};
using sampler_ptr = std::unique_ptr<llama_sampler, sampler_deleter>;

sampler_ptr make_sampler(const lg_generate_params & p) {
    sampler_ptr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (p.temperature <= 0.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
        return chain;
    }
    if (p.top_k > 0) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(p.top_k));
    }
    if (p.top_p < 1.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(p.top_p, 1));
    }
    llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(p.temperature));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(p.seed));
    return chain;
}

std::string token_piece(const llama_vocab * vocab, llama_token token) {
    std::string piece(64, '\0');
    int32_t n = llama_token_to_piece(vocab, token, piece.data(), static_cast<int32_t>(piece.size()), 0, false);
    if (n < 0) {
        piece.resize(static_cast<size_t>(-n));
        n = llama_token_to_piece(vocab, token, piece.data(), static_cast<int32_t>(piece.size()), 0, false);
    }
    piece.resize(static_cast<size_t>(std::max(n, 0)));
    return piece;
}

}  // namespace

lg_chat::lg_chat(lg_model & model_, const lg_chat_params & params_) : model(model_), params(params_) {
    if (model.is_encoder) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "model " + model.name + " is an encoder (" + model.architecture +
                                              "): it has no chat path, only the guard path");
    }
    n_ctx = params.n_ctx == 0 ? 2048 : params.n_ctx;
    if (model.n_ctx_train > 0) {
        n_ctx = std::min(n_ctx, static_cast<uint32_t>(model.n_ctx_train));
    }
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_ctx;
    if (params.n_batch > 0) {
        cparams.n_batch = params.n_batch;
    }
    if (params.n_ubatch > 0) {
        cparams.n_ubatch = params.n_ubatch;
    }
    const int n_threads = lg::resolve_n_threads(params.n_threads);
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.no_perf = true;
    if (params.flash_attn >= 0) {
        cparams.flash_attn_type = params.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    ctx = llama_init_from_model(model.model, cparams);
    if (!ctx) {
        lg::fail(LG_ERR_BACKEND, "llama.cpp could not create the chat context (n_ctx " + std::to_string(n_ctx) +
                                     "): out of memory? try a smaller n_ctx");
    }
}

lg_chat::~lg_chat() {
    if (ctx) {
        llama_free(ctx);
    }
}

std::string lg_chat::format(const lg_message * messages, size_t n) const {
    std::vector<llama_chat_message> msgs(n);
    for (size_t i = 0; i < n; ++i) {
        if (!messages[i].role || !messages[i].content) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "message " + std::to_string(i) + " has a NULL role or content");
        }
        lg::check_text(messages[i].content, "message content");
        msgs[i] = {messages[i].role, messages[i].content};
    }
    const char * tmpl = llama_model_chat_template(model.model, nullptr);
    if (!tmpl) {
        std::string joined;
        for (size_t i = 0; i < n; ++i) {
            joined += (i ? "\n" : "") + std::string(messages[i].content);
        }
        return joined;
    }
    std::vector<char> buf(4096);
    int32_t len = llama_chat_apply_template(tmpl, msgs.data(), n, true, buf.data(), static_cast<int32_t>(buf.size()));
    if (len > static_cast<int32_t>(buf.size())) {
        buf.resize(static_cast<size_t>(len));
        len = llama_chat_apply_template(tmpl, msgs.data(), n, true, buf.data(), static_cast<int32_t>(buf.size()));
    }
    if (len < 0) {
        lg::fail(LG_ERR_FORMAT, "llama.cpp does not support the chat template of model " + model.name +
                                    ": format the prompt yourself and use generate");
    }
    return std::string(buf.data(), static_cast<size_t>(len));
}

void lg_chat::decode(const llama_token * tokens, size_t n, bool clear) {
    if (clear) {
        llama_memory_clear(llama_get_memory(ctx), true);
        n_past = 0;
    }
    if (n == 0) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "no tokens to decode");
    }
    const llama_token n_vocab = llama_vocab_n_tokens(model.vocab);
    for (size_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "token id " + std::to_string(tokens[i]) + " is outside the vocabulary (" +
                                                  std::to_string(n_vocab) + " tokens)");
        }
    }
    if (n_past + n > n_ctx) {
        lg::fail(LG_ERR_TOO_LONG, "chat context is full: " + std::to_string(n_past) + " + " + std::to_string(n) +
                                      " tokens > n_ctx " + std::to_string(n_ctx) + ": raise n_ctx or shorten the prompt");
    }
    const size_t n_batch = llama_n_batch(ctx);
    llama_batch batch = llama_batch_init(static_cast<int32_t>(std::min(n, n_batch)), 0, 1);
    for (size_t start = 0; start < n; start += n_batch) {
        const size_t count = std::min(n_batch, n - start);
        batch.n_tokens = static_cast<int32_t>(count);
        for (size_t k = 0; k < count; ++k) {
            batch.token[k] = tokens[start + k];
            batch.pos[k] = static_cast<llama_pos>(n_past + k);
            batch.n_seq_id[k] = 1;
            batch.seq_id[k][0] = 0;
            batch.logits[k] = k + 1 == count;
        }
        const int32_t rc = llama_decode(ctx, batch);
        if (rc != 0) {
            llama_batch_free(batch);
            lg::fail(LG_ERR_BACKEND, "llama.cpp chat decode failed (" + std::to_string(rc) + ")");
        }
        n_past += count;
    }
    llama_batch_free(batch);
}

const float * lg_chat::last_logits() const { return llama_get_logits_ith(ctx, -1); }

std::string lg_chat::generate(const std::string & prompt, const lg_generate_params & p) {
    lg::check_text(prompt, "prompt");
    const std::vector<llama_token> tokens = lg::tokenize(model.vocab, prompt, /*add_special=*/true, /*parse_special=*/true);
    decode(tokens.data(), tokens.size(), /*clear=*/true);

    sampler_ptr sampler = make_sampler(p);
    std::string out;
    size_t max_stop = 0;
    for (size_t i = 0; i < p.n_stop; ++i) {
        max_stop = std::max(max_stop, std::string(p.stop[i]).size());
    }
    for (int32_t step = 0; p.max_tokens <= 0 || step < p.max_tokens; ++step) {
        const llama_token token = llama_sampler_sample(sampler.get(), ctx, -1);
        if (llama_vocab_is_eog(model.vocab, token)) {
            break;
        }
        const std::string piece = token_piece(model.vocab, token);
        out += piece;
        if (p.on_token && !p.on_token(token, piece.data(), piece.size(), last_logits(), p.user_data)) {
            break;
        }
        // Stop strings: only the tail that the new piece could have completed needs a look.
        bool stopped = false;
        const size_t from = out.size() > piece.size() + max_stop ? out.size() - piece.size() - max_stop : 0;
        for (size_t i = 0; i < p.n_stop && !stopped; ++i) {
            const size_t at = out.find(p.stop[i], from);
            if (at != std::string::npos && p.stop[i][0] != '\0') {
                out.resize(at);
                stopped = true;
            }
        }
        if (stopped || n_past >= n_ctx) {
            break;
        }
        decode(&token, 1, /*clear=*/false);
    }
    return out;
}

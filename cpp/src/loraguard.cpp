// The C API: argument checks and exception-to-status mapping around the lg_* classes.
#include "loraguard.h"

#include "lg-chat.h"
#include "lg-decode.h"
#include "lg-error.h"
#include "lg-file-type.h"
#include "lg-fold.h"
#include "lg-guard.h"
#include "lg-lines.h"
#include "lg-model.h"
#include "lg-text.h"
#include "lg-threads.h"
#include "lg-gguf.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>

namespace {

void require(const void * p, const char * what) {
    if (!p) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL");
    }
}

char * copy_string(const std::string & s) {
    char * out = static_cast<char *>(std::malloc(s.size() + 1));
    if (!out) {
        throw std::bad_alloc();
    }
    std::memcpy(out, s.c_str(), s.size() + 1);
    return out;
}

// Copies at most n_max bytes of text into out (may be NULL) and returns its full length, so that a caller can ask
// for the length first and call again with a buffer that holds it.
size_t copy_text(const std::string & text, char * out, size_t n_max) {
    if (out) {
        std::memcpy(out, text.data(), std::min(n_max, text.size()));
    }
    return text.size();
}

// A text argument of the text functions (lg_fold_text and its kin): present and valid UTF-8 without NUL bytes.
std::string_view text_argument(const char * text, size_t text_len) {
    require(text, "text");
    const std::string_view in(text, text_len);
    lg::check_encoding(in, "text");
    return in;
}

size_t copy_tokens(const std::vector<llama_token> & tokens, int32_t * out, size_t n_max) {
    const size_t n = std::min(tokens.size(), n_max);
    if (out) {
        std::copy(tokens.begin(), tokens.begin() + static_cast<long>(n), out);
    }
    return tokens.size();
}

}  // namespace

extern "C" {

const char * lg_last_error(void) { return lg::last_error(); }

const char * lg_status_name(lg_status status) {
    switch (status) {
        case LG_OK: return "ok";
        case LG_ERR_INVALID_ARGUMENT: return "invalid argument";
        case LG_ERR_IO: return "i/o error";
        case LG_ERR_FORMAT: return "bad file format";
        case LG_ERR_MISMATCH: return "guard and model mismatch";
        case LG_ERR_TOO_LONG: return "input too long";
        case LG_ERR_BACKEND: return "backend error";
        case LG_ERR_CANCELLED: return "cancelled";
        case LG_ERR_INTERNAL: return "internal error";
        case LG_FLAGGED: return "flagged by the guard";
    }
    return "unknown status";
}

int32_t lg_default_n_threads(void) { return lg::default_n_threads(); }

lg_model_params lg_model_default_params(void) {
    lg_model_params p{};
    p.n_gpu_layers = 0;
    p.cpu_repack = LG_CPU_REPACK_AUTO;
    p.use_mmap = true;
    p.verbose = false;
    p.n_threads = 0;
    return p;
}

lg_status lg_model_load(const char * path, const lg_model_params * params, lg_model ** out) {
    return lg::call([&] {
        require(path, "path");
        require(out, "out");
        *out = nullptr;
        const lg_model_params p = params ? *params : lg_model_default_params();
        *out = new lg_model(path, p);
    });
}

void lg_model_free(lg_model * model) {
    if (model) {
        model->release();
    }
}

int32_t lg_model_n_threads(const lg_model * m) { return m ? m->n_threads_budget() : 0; }

const char * lg_model_architecture(const lg_model * m) { return m ? m->architecture.c_str() : ""; }
const char * lg_model_name(const lg_model * m) { return m ? m->name.c_str() : ""; }
const char * lg_model_fingerprint(const lg_model * m) { return m ? m->fingerprint.c_str() : ""; }
const char * lg_model_file_type(const lg_model * m) { return m ? m->file_type.c_str() : ""; }
int32_t lg_model_n_embd(const lg_model * m) { return m ? m->n_embd : 0; }
int32_t lg_model_n_layer(const lg_model * m) { return m ? m->n_layer : 0; }
int32_t lg_model_n_vocab(const lg_model * m) { return m ? llama_vocab_n_tokens(m->vocab) : 0; }
uint64_t lg_model_n_params(const lg_model * m) { return m ? llama_model_n_params(m->model) : 0; }
bool lg_model_is_encoder(const lg_model * m) { return m && m->is_encoder; }

lg_status lg_model_tokenize(const lg_model * model, const char * text, size_t text_len, bool add_special,
                            bool parse_special, int32_t * tokens, size_t n_max, size_t * n_tokens) {
    return lg::call([&] {
        require(model, "model");
        require(text, "text");
        require(n_tokens, "n_tokens");
        *n_tokens = copy_tokens(lg::tokenize(model->vocab, std::string(text, text_len), add_special, parse_special),
                                tokens, n_max);
    });
}

lg_status lg_fold_text(const char * text, size_t text_len, char * out, size_t n_max, size_t * n_bytes) {
    return lg::call([&] {
        require(n_bytes, "n_bytes");
        *n_bytes = copy_text(lg::fold_text(text_argument(text, text_len)), out, n_max);
    });
}

lg_status lg_decoded_reading(const char * text, size_t text_len, char * out, size_t n_max, size_t * n_bytes,
                             bool * found) {
    return lg::call([&] {
        require(n_bytes, "n_bytes");
        require(found, "found");
        const std::optional<std::string> read = lg::decoded_reading(lg::fold_text(text_argument(text, text_len)));
        *found = read.has_value();
        *n_bytes = read ? copy_text(*read, out, n_max) : 0;
    });
}

lg_status lg_text_lines(const char * text, size_t text_len, char * out, size_t n_max, size_t * n_bytes,
                        size_t * n_lines) {
    return lg::call([&] {
        require(n_bytes, "n_bytes");
        require(n_lines, "n_lines");
        const std::vector<std::string> lines = lg::text_lines(lg::fold_text(text_argument(text, text_len)));
        std::string joined;
        for (const std::string & line : lines) {
            if (!joined.empty()) {
                joined += '\n';
            }
            joined += line;
        }
        *n_lines = lines.size();
        *n_bytes = copy_text(joined, out, n_max);
    });
}

lg_status lg_quantize(const char * input_path, const char * output_path, const char * type, int32_t n_threads) {
    return lg::call([&] {
        require(input_path, "input_path");
        require(output_path, "output_path");
        require(type, "type");
        const auto ftype = lg::file_type_from_name(type);
        if (!ftype) {
            lg::fail(LG_ERR_INVALID_ARGUMENT,
                     std::string("unknown quantization type '") + type + "': choose one of " + lg::file_type_names());
        }
        lg::init_backend_once(false);
        { const lg::gguf_file probe(input_path, "model"); }  // clear errors for missing or non-GGUF input
        const std::filesystem::path out(output_path);
        const std::filesystem::path tmp = lg::temp_path_beside(out);
        llama_model_quantize_params qp = llama_model_quantize_default_params();
        qp.ftype = *ftype;
        qp.nthread = lg::resolve_n_threads(n_threads);
        qp.allow_requantize = true;
        const uint32_t rc = llama_model_quantize(input_path, tmp.string().c_str(), &qp);
        std::error_code ec;
        if (rc != 0) {
            std::filesystem::remove(tmp, ec);
            lg::fail(LG_ERR_FORMAT, std::string("llama.cpp could not quantize ") + input_path + " to " + type +
                                        " (unsupported tensor shapes for this type, or an unreadable model)");
        }
        std::filesystem::rename(tmp, out, ec);
        if (ec) {
            std::filesystem::remove(tmp, ec);
            lg::fail(LG_ERR_IO, "could not write " + out.string() + ": " + ec.message());
        }
    });
}

lg_guard_params lg_guard_default_params(void) {
    lg_guard_params p{};
    p.n_ctx = 512;
    p.n_seq_max = 32;
    p.n_threads = 0;
    p.overflow = LG_OVERFLOW_WINDOWS;
    p.isolated = false;
    p.f32_kv_cache = false;
    p.flash_attn = LG_FLASH_ATTN_AUTO;
    p.n_ubatch = 0;
    p.max_text_bytes = 0;
    p.text_form = LG_TEXT_FOLDED;
    p.read_lines = true;
    return p;
}

lg_status lg_guard_load(lg_model * model, const char * path, const lg_guard_params * params, lg_guard ** out) {
    return lg::call([&] {
        require(model, "model");
        require(path, "path");
        require(out, "out");
        *out = nullptr;
        const lg_guard_params p = params ? *params : lg_guard_default_params();
        if (p.overflow < LG_OVERFLOW_KEEP_END || p.overflow > LG_OVERFLOW_ERROR) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "unknown overflow policy " + std::to_string(p.overflow));
        }
        if (p.text_form != LG_TEXT_FOLDED && p.text_form != LG_TEXT_EXACT) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "unknown text form " + std::to_string(p.text_form) +
                                                  ": LG_TEXT_FOLDED (0) or LG_TEXT_EXACT (1)");
        }
        *out = new lg_guard(*model, path, p);
    });
}

void lg_guard_free(lg_guard * guard) { delete guard; }

int32_t lg_guard_n_labels(const lg_guard * g) { return g ? static_cast<int32_t>(g->spec.labels.size()) : 0; }

const char * lg_guard_label(const lg_guard * g, int32_t i) {
    if (!g || i < 0 || i >= lg_guard_n_labels(g)) {
        return nullptr;
    }
    return g->spec.labels[static_cast<size_t>(i)].c_str();
}

float lg_guard_threshold(const lg_guard * g, int32_t i) {
    if (!g || i < 0 || i >= lg_guard_n_labels(g)) {
        return NAN;
    }
    return g->spec.thresholds[static_cast<size_t>(i)];
}

const char * lg_guard_meta(const lg_guard * g, const char * key) {
    if (!g || !key) {
        return nullptr;
    }
    const auto it = g->spec.meta.find(key);
    return it == g->spec.meta.end() ? nullptr : it->second.c_str();
}

int32_t lg_guard_lora_rank(const lg_guard * g) { return g ? g->spec.lora_rank : 0; }

uint64_t lg_guard_n_params(const lg_guard * g) {
    return g ? g->spec.lora_params + g->spec.head_weight.size() + g->spec.head_bias.size() : 0;
}

const char * lg_guard_warning(const lg_guard * g) { return g ? g->spec.warning.c_str() : ""; }

lg_status lg_guard_classify(lg_guard * guard, const lg_input * inputs, size_t n, float * logits, float * probs,
                            uint8_t * flagged) {
    return lg::call([&] {
        require(guard, "guard");
        require(logits, "logits");
        if (n == 0) {
            return;
        }
        require(inputs, "inputs");
        guard->classify(inputs, n, logits);
        guard->verdicts(logits, n, probs, flagged);
    });
}

bool lg_guard_is_alora(const lg_guard * g) { return g && g->is_alora(); }

lg_status lg_guard_invocation(const lg_guard * guard, int32_t * tokens, size_t n_max, size_t * n_tokens) {
    return lg::call([&] {
        require(guard, "guard");
        require(n_tokens, "n_tokens");
        *n_tokens = copy_tokens(guard->spec.invocation, tokens, n_max);
    });
}

lg_status lg_guard_tokenize(const lg_guard * guard, const lg_input * input, int32_t * tokens, size_t n_max,
                            size_t * n_tokens) {
    return lg::call([&] {
        require(guard, "guard");
        require(input, "input");
        require(n_tokens, "n_tokens");
        *n_tokens = copy_tokens(guard->tokenize(*input), tokens, n_max);
    });
}

lg_status lg_guard_sequences(const lg_guard * guard, const lg_input * input, int32_t * tokens, size_t n_max,
                             size_t * n_tokens, size_t * lengths, size_t n_lengths_max, size_t * n_sequences) {
    return lg::call([&] {
        require(guard, "guard");
        require(input, "input");
        require(n_tokens, "n_tokens");
        require(n_sequences, "n_sequences");
        std::vector<llama_token> all;
        const auto sequences = guard->sequences(*input);
        for (size_t i = 0; i < sequences.size(); ++i) {
            if (lengths && i < n_lengths_max) {
                lengths[i] = sequences[i].size();
            }
            all.insert(all.end(), sequences[i].begin(), sequences[i].end());
        }
        *n_tokens = copy_tokens(all, tokens, n_max);
        *n_sequences = sequences.size();
    });
}

lg_chat_params lg_chat_default_params(void) {
    const llama_context_params d = llama_context_default_params();
    lg_chat_params p{};
    p.n_ctx = 2048;
    p.n_batch = d.n_batch;
    p.n_ubatch = d.n_ubatch;
    p.n_threads = 0;
    p.flash_attn = LG_FLASH_ATTN_AUTO;
    p.f32_kv_cache = false;
    return p;
}

lg_status lg_chat_create(lg_model * model, const lg_chat_params * params, lg_chat ** out) {
    return lg::call([&] {
        require(model, "model");
        require(out, "out");
        *out = nullptr;
        *out = new lg_chat(*model, params ? *params : lg_chat_default_params());
    });
}

void lg_chat_free(lg_chat * chat) { delete chat; }

lg_status lg_chat_format(const lg_chat * chat, const lg_message * messages, size_t n, char ** out) {
    return lg::call([&] {
        require(chat, "chat");
        require(out, "out");
        if (n == 0) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "no messages to format");
        }
        require(messages, "messages");
        *out = copy_string(chat->format(messages, n));
    });
}

lg_status lg_chat_tokenize(const lg_chat * chat, const lg_message * messages, size_t n, int32_t * tokens,
                           size_t n_max, size_t * n_tokens) {
    return lg::call([&] {
        require(chat, "chat");
        require(n_tokens, "n_tokens");
        if (n == 0) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "no messages to tokenize");
        }
        require(messages, "messages");
        *n_tokens = copy_tokens(chat->tokenize(messages, n), tokens, n_max);
    });
}

lg_generate_params lg_generate_default_params(void) {
    lg_generate_params p{};
    p.max_tokens = 256;
    p.temperature = 0.0f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.seed = 0;
    p.stop = nullptr;
    p.n_stop = 0;
    p.on_token = nullptr;
    p.user_data = nullptr;
    p.guard = nullptr;
    p.guard_every = 16;
    p.on_verdict = nullptr;
    return p;
}

namespace {

lg_status generate_with(lg_chat * chat, const lg_generate_params * params, char ** out,
                        const std::function<std::vector<llama_token>()> & prompt_tokens,
                        const lg_message * messages = nullptr, size_t n_messages = 0) {
    return lg::call([&] {
        require(chat, "chat");
        if (out) {
            *out = nullptr;
        }
        const lg_generate_params p = params ? *params : lg_generate_default_params();
        if (p.n_stop > 0) {
            require(p.stop, "stop");
        }
        const std::vector<llama_token> tokens = prompt_tokens();
        const auto lock = chat->enter(/*allowed_in_callback=*/false, "a generation");
        const lg_chat::generation result = chat->generate(tokens, p, messages, n_messages);
        if (out) {
            *out = copy_string(result.text);
        }
        if (!result.flagged.empty()) {
            lg::fail(LG_FLAGGED, result.flagged);
        }
    });
}

}  // namespace

lg_status lg_chat_generate(lg_chat * chat, const char * prompt, size_t prompt_len, const lg_generate_params * params,
                           char ** out) {
    return generate_with(chat, params, out, [&] {
        require(prompt, "prompt");
        return chat->tokenize_raw(std::string_view(prompt, prompt_len));
    });
}

lg_status lg_chat_generate_messages(lg_chat * chat, const lg_message * messages, size_t n,
                                    const lg_generate_params * params, char ** out) {
    return generate_with(chat, params, out, [&] {
        if (n == 0) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "no messages to answer");
        }
        require(messages, "messages");
        return chat->tokenize(messages, n);
    }, messages, n);
}

void lg_chat_cancel(lg_chat * chat) {
    if (chat) {
        chat->cancel_requested = true;
    }
}

lg_status lg_chat_decode(lg_chat * chat, const int32_t * tokens, size_t n, bool clear, float * logits) {
    return lg::call([&] {
        require(chat, "chat");
        if (n == 0) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "no tokens to decode: pass at least one token id");
        }
        require(tokens, "tokens");
        const auto lock = chat->enter(/*allowed_in_callback=*/false, "lg_chat_decode");
        chat->decode(tokens, n, clear);
        if (logits) {
            const float * last = chat->last_logits();
            std::copy(last, last + llama_vocab_n_tokens(chat->model.vocab), logits);
        }
    });
}

lg_status lg_chat_classify(lg_chat * chat, lg_guard * guard, float * logits, float * probs, uint8_t * flagged) {
    return lg::call([&] {
        require(chat, "chat");
        require(guard, "guard");
        require(logits, "logits");
        const auto lock = chat->enter(/*allowed_in_callback=*/true, "lg_chat_classify");
        chat->classify(*guard, logits);
        guard->verdicts(logits, 1, probs, flagged);
    });
}

lg_status lg_chat_memory(lg_chat * chat, size_t * n_tokens, int32_t * pos_min, int32_t * pos_max,
                         size_t * state_bytes) {
    return lg::call([&] {
        require(chat, "chat");
        const auto lock = chat->enter(/*allowed_in_callback=*/true, "lg_chat_memory");
        llama_memory_t memory = llama_get_memory(chat->ctx);
        if (n_tokens) {
            *n_tokens = chat->n_tokens();
        }
        if (pos_min) {
            *pos_min = llama_memory_seq_pos_min(memory, 0);
        }
        if (pos_max) {
            *pos_max = llama_memory_seq_pos_max(memory, 0);
        }
        if (state_bytes) {
            *state_bytes = llama_state_seq_get_size(chat->ctx, 0);
        }
    });
}

void lg_string_free(char * s) { std::free(s); }

}  // extern "C"

#include "lg-model.h"

#include "lg-error.h"
#include "lg-file-type.h"
#include "lg-fingerprint.h"
#include "lg-gguf.h"
#include "lg-model-file.h"
#include "lg-threads.h"

#include "ggml-backend.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <cstdio>
#include <cstring>
#include <unistd.h>
#include <filesystem>
#include <mutex>
#include <vector>

namespace {

bool g_verbose = false;

// llama.cpp logs to stderr by default; a library embedded in an app should only speak up on errors.
void log_filter(ggml_log_level level, const char * text, void * /*user_data*/) {
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) {
        std::fputs(text, stderr);
    }
}

}  // namespace

namespace lg {

void init_backend_once(bool verbose) {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_filter, nullptr);
        llama_backend_init();
    });
    g_verbose = g_verbose || verbose;
}

std::filesystem::path temp_path_beside(const std::filesystem::path & target) {
    static std::atomic<unsigned> counter{0};
    return target.string() + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

}  // namespace lg

namespace {

// Whether the CPU backend would place weights in an AMX buffer (see lg_model_params.cpu_repack).
bool cpu_offers_amx() {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!cpu) {
        return false;
    }
    auto get_extra_bufts = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(cpu), "ggml_backend_dev_get_extra_bufts"));
    if (!get_extra_bufts) {
        return false;
    }
    for (ggml_backend_buffer_type_t * buft = get_extra_bufts(cpu); buft && *buft; ++buft) {
        if (std::strstr(ggml_backend_buft_name(*buft), "AMX")) {
            return true;
        }
    }
    return false;
}

// The tensor types the AMX buffer takes (qtype_has_amx_kernels in ggml-cpu/amx/common.h of the pinned llama.cpp).
bool has_amx_kernels(ggml_type type) {
    switch (type) {
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
        case GGML_TYPE_Q6_K:
        case GGML_TYPE_IQ4_XS: return true;
        default: return false;
    }
}

std::string meta_str(const llama_model * model, const std::string & key) {
    char buf[512];
    const int32_t n = llama_model_meta_val_str(model, key.c_str(), buf, sizeof(buf));
    return n < 0 ? std::string() : std::string(buf);
}

}  // namespace

lg_model::lg_model(const std::string & path_, const lg_model_params & params) : path(path_) {
    lg::init_backend_once(params.verbose);

    // Our own read of the file first: clear errors for missing or non-GGUF files, and the metadata the guard
    // checks need, before llama.cpp spends time loading weights.
    const lg::gguf_file file(path, "model");
    lg::check_model_file(file);
    if (file.get_str("general.type").value_or("model") == "adapter") {
        lg::fail(LG_ERR_FORMAT, "model file " + path +
                                    " is a LoRA adapter, not a base model: pass it as the guard and the base GGUF as the model");
    }
    architecture = file.get_str("general.architecture").value_or("");
    if (architecture.empty()) {
        lg::fail(LG_ERR_FORMAT, "model file " + path + " has no general.architecture: not a llama.cpp model");
    }
    fingerprint = lg::base_fingerprint(file);
    bool amx_types = false;
    for (int64_t i = 0; i < file.n_tensors(); ++i) {
        const ggml_tensor * t = file.tensor(i);
        if (ggml_n_dims(t) == 2) {
            matrix_shapes[t->name] = {t->ne[0], t->ne[1]};
        }
        amx_types = amx_types || has_amx_kernels(t->type);
    }

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = params.n_gpu_layers;
    // Off only where the crash can happen, so that elsewhere (F16/F32 weights, CPUs without AMX) the weights sit
    // in the very layouts stock llama.cpp uses and the chat path's logits stay bit-identical to it.
    mparams.use_extra_bufts = params.cpu_repack < 0 ? !(amx_types && cpu_offers_amx()) : params.cpu_repack != 0;
    if (!params.use_mmap) {
        mparams.load_mode = LLAMA_LOAD_MODE_NONE;
    }
    model = llama_model_load_from_file(path.c_str(), mparams);
    if (!model) {
        lg::fail(LG_ERR_FORMAT, "llama.cpp could not load model " + path +
                                    " (unsupported architecture '" + architecture +
                                    "', truncated file, or out of memory; run with verbose=true for llama.cpp's log)");
    }
    vocab = llama_model_get_vocab(model);
    n_embd = llama_model_n_embd(model);
    n_layer = llama_model_n_layer(model);
    n_ctx_train = llama_model_n_ctx_train(model);
    name = meta_str(model, "general.name");
    if (name.empty()) {
        name = std::filesystem::path(path).filename().string();
    }
    const std::string ftype = meta_str(model, "general.file_type");
    file_type = ftype.empty() ? "F32" : lg::file_type_name(static_cast<llama_ftype>(std::stoi(ftype)));
    is_encoder = meta_str(model, architecture + ".attention.causal") == "false";
    special_tokens = lg::special_tokens_of(vocab);
    for (llama_token id = 0; id < llama_vocab_n_tokens(vocab); ++id) {
        // A token's stored text is never shorter than the bytes it stands for (byte-level BPE and SentencePiece
        // both spell bytes with one or more characters), so this bounds the bytes per token.
        const char * text = llama_vocab_get_text(vocab, id);
        max_token_bytes = std::max(max_token_bytes, text ? std::strlen(text) : size_t{0});
    }
    max_token_bytes = std::max(max_token_bytes, size_t{4});  // byte-fallback and unknown tokens: one UTF-8 character
    n_threads_requested = params.n_threads > 0 ? lg::resolve_n_threads(params.n_threads) : 0;
}

int lg_model::n_threads_budget() const {
    return n_threads_requested > 0 ? n_threads_requested : lg::default_n_threads();
}

lg_model::~lg_model() {
    if (model) {
        llama_model_free(model);
    }
}

void lg_model::retain() { refs.fetch_add(1, std::memory_order_relaxed); }

void lg_model::release() {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        delete this;
    }
}

namespace lg {

thread_share::thread_share(lg_model & model, llama_context * ctx, int fixed_n_threads) : model_(model) {
    const int running = model_.n_running.fetch_add(1) + 1;
    const int n = fixed_n_threads > 0 ? fixed_n_threads : std::max(1, model_.n_threads_budget() / running);
    if (llama_n_threads(ctx) != n) {
        llama_set_n_threads(ctx, n, n);
    }
}

thread_share::~thread_share() { model_.n_running.fetch_sub(1); }

}  // namespace lg

namespace lg {

std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool add_special,
                                  bool parse_special) {
    if (text.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()) - 16) {
        fail(LG_ERR_TOO_LONG, "text of " + std::to_string(text.size()) + " bytes is past what llama.cpp can tokenize");
    }
    std::vector<llama_token> tokens(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), tokens.data(),
                               static_cast<int32_t>(tokens.size()), add_special, parse_special);
    if (n < 0) {
        tokens.resize(static_cast<size_t>(-n));
        n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), tokens.data(),
                           static_cast<int32_t>(tokens.size()), add_special, parse_special);
    }
    if (n < 0) {
        fail(LG_ERR_INTERNAL, "tokenization failed (" + std::to_string(n) + ")");
    }
    tokens.resize(static_cast<size_t>(n));
    return tokens;
}

std::string token_text(const llama_vocab * vocab, llama_token token) {
    std::string piece(64, '\0');
    int32_t n = llama_token_to_piece(vocab, token, piece.data(), static_cast<int32_t>(piece.size()), 0, false);
    if (n < 0) {
        piece.resize(static_cast<size_t>(-n));
        n = llama_token_to_piece(vocab, token, piece.data(), static_cast<int32_t>(piece.size()), 0, false);
    }
    piece.resize(static_cast<size_t>(std::max(n, 0)));
    return piece;
}

}  // namespace lg

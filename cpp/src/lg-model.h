// The one llama_model that the chat and guard paths share.
#pragma once

#include "llama.h"
#include "loraguard.h"
#include "lg-special.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

struct lg_model {
    lg_model(const std::string & path, const lg_model_params & params);
    lg_model(const lg_model &) = delete;
    lg_model & operator=(const lg_model &) = delete;

    // The caller of lg_model_load holds one reference, every guard and chat made from the model another: the
    // last release frees it, so a path never outlives the weights it runs on.
    void retain();
    void release();

    llama_model * model = nullptr;
    const llama_vocab * vocab = nullptr;

    std::string path;
    std::string architecture;
    std::string name;
    std::string fingerprint;
    std::string file_type;
    int32_t n_embd = 0;
    int32_t n_layer = 0;
    int32_t n_ctx_train = 0;
    bool is_encoder = false;
    // Logical shapes (ne[0], ne[1]) of the model's 2-D tensors, for checking LoRA tensors before llama.cpp loads them.
    std::map<std::string, std::array<int64_t, 2>> matrix_shapes;
    // The tokens llama.cpp's tokenizer matches as text when parse_special is on (control, user-defined and
    // unknown tokens with a text), longest first as it matches them.
    std::vector<lg::special_token> special_tokens;
    size_t max_token_bytes = 0;  // an upper bound on the bytes one token stands for
    // Threads that the model's paths share: lg_model_params.n_threads, or 0 for lg::default_n_threads() at each call.
    int n_threads_requested = 0;
    int n_threads_budget() const;
    std::atomic<int> n_running{0};  // paths decoding right now, each taking an equal share of the budget

  private:
    ~lg_model();
    std::atomic<int> refs{1};
};

namespace lg {

// Holds a share of the model's thread budget while a path decodes: n_threads is the budget divided by the
// paths decoding at that moment (at least 1), or the path's own fixed count. Applied to ctx on entry.
class thread_share {
  public:
    thread_share(lg_model & model, llama_context * ctx, int fixed_n_threads);
    ~thread_share();
    thread_share(const thread_share &) = delete;
    thread_share & operator=(const thread_share &) = delete;

  private:
    lg_model & model_;
};

// Routes llama.cpp's log to stderr (errors only unless verbose) and initialises its backends, once per process.
void init_backend_once(bool verbose);

// A unique temporary name in target's directory, for write-then-rename.
std::filesystem::path temp_path_beside(const std::filesystem::path & target);


// Tokens of text with the model's special-token handling; fails with a clear message instead of returning
// a negative count.
std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool add_special,
                                  bool parse_special);

// The text a token stands for as generated text shows it: special tokens (control) give "".
std::string token_text(const llama_vocab * vocab, llama_token token);

}  // namespace lg

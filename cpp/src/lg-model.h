// The one llama_model that the chat and guard paths share.
#pragma once

#include "llama.h"
#include "loraguard.h"

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

struct lg_model {
    lg_model(const std::string & path, const lg_model_params & params);
    ~lg_model();
    lg_model(const lg_model &) = delete;
    lg_model & operator=(const lg_model &) = delete;

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
};

namespace lg {

// Routes llama.cpp's log to stderr (errors only unless verbose) and initialises its backends, once per process.
void init_backend_once(bool verbose);

// A unique temporary name in target's directory, for write-then-rename.
std::filesystem::path temp_path_beside(const std::filesystem::path & target);


// Tokens of text with the model's special-token handling; fails with a clear message instead of returning
// a negative count.
std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool add_special,
                                  bool parse_special);

}  // namespace lg

// Reading the final-norm hidden state out of a llama.cpp graph, for the guard head.
#pragma once

#include "ggml-backend.h"

#include <cstdint>
#include <string>
#include <vector>

namespace lg {

// Rows of final-norm hidden states captured from the graph, in output order. A context's eval callback is
// fixed when the context is made, so a context that only sometimes needs the state (the chat's) keeps
// active false between guard calls: then the callback asks for no tensor and the graph runs as without one.
struct hidden_capture {
    int64_t n_embd = 0;
    bool active = true;
    std::vector<float> rows;
    std::string error;

    void reset() {
        rows.clear();
        error.clear();
    }
};

// The scheduler callback (llama_context_params.cb_eval, user data: a hidden_capture): while active, asks for the
// final-norm tensor only, copies its rows, then stops the graph (the LM head is never needed by the guard).
bool capture_final_norm(ggml_tensor * t, bool ask, void * user_data);

// The captured rows, checked: n_rows x n_embd, or a clear error naming the architecture that did not expose them.
void check_captured(const hidden_capture & capture, size_t n_rows, const std::string & architecture);

}  // namespace lg

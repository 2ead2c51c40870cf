#include "lg-capture.h"

#include "lg-error.h"

#include <cstring>

namespace lg {

namespace {

// The decoder builders in llama.cpp name the final-norm output "result_norm"; the LM head follows it.
constexpr const char * k_final_norm = "result_norm";

}  // namespace

bool capture_final_norm(ggml_tensor * t, bool ask, void * user_data) {
    auto * cap = static_cast<hidden_capture *>(user_data);
    if (!cap->active) {
        return false;  // asks for nothing: the scheduler computes the whole graph in one piece, as without a callback
    }
    if (ask) {
        return std::strcmp(t->name, k_final_norm) == 0;
    }
    if (t->type != GGML_TYPE_F32 || t->ne[0] != cap->n_embd || !ggml_is_contiguous(t)) {
        cap->error = "final norm tensor is not a contiguous F32 [n_embd, n_outputs] matrix";
        return false;
    }
    const size_t offset = cap->rows.size();
    cap->rows.resize(offset + static_cast<size_t>(ggml_nelements(t)));
    ggml_backend_tensor_get(t, cap->rows.data() + offset, 0, ggml_nbytes(t));
    return false;
}

void check_captured(const hidden_capture & capture, size_t n_rows, const std::string & architecture) {
    if (!capture.error.empty()) {
        fail(LG_ERR_BACKEND, capture.error);
    }
    if (capture.rows.size() != n_rows * static_cast<size_t>(capture.n_embd)) {
        fail(LG_ERR_BACKEND, "architecture '" + architecture + "' did not expose its final norm ('" + k_final_norm +
                                 "'): the guard path does not support it");
    }
}

}  // namespace lg

#include "lg-fingerprint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

namespace lg {

namespace {

// FNV-1a, 64-bit: a stable, dependency-free hash that the Python converter reproduces byte for byte.
class fnv1a64 {
  public:
    void bytes(const void * data, size_t n) {
        const auto * p = static_cast<const uint8_t *>(data);
        for (size_t i = 0; i < n; ++i) {
            h_ = (h_ ^ p[i]) * 0x100000001b3ULL;
        }
    }
    void str0(const std::string & s) { bytes(s.c_str(), s.size() + 1); }  // with its NUL terminator
    void u32le(uint32_t v) {
        const uint8_t b[4] = {uint8_t(v), uint8_t(v >> 8), uint8_t(v >> 16), uint8_t(v >> 24)};
        bytes(b, 4);
    }
    void u64le(uint64_t v) {
        uint8_t b[8];
        for (int i = 0; i < 8; ++i) {
            b[i] = uint8_t(v >> (8 * i));
        }
        bytes(b, 8);
    }
    uint64_t value() const { return h_; }

  private:
    uint64_t h_ = 0xcbf29ce484222325ULL;
};

}  // namespace

std::string base_fingerprint(const gguf_file & model) {
    fnv1a64 h;
    h.str0("loraguard-fingerprint-v1");
    h.str0(model.get_str("general.architecture").value_or(""));

    std::vector<std::pair<std::string, int64_t>> tensors;
    for (int64_t i = 0; i < model.n_tensors(); ++i) {
        tensors.emplace_back(model.tensor(i)->name, i);
    }
    std::sort(tensors.begin(), tensors.end());
    for (const auto & [name, i] : tensors) {
        const ggml_tensor * t = model.tensor(i);
        const int n_dims = ggml_n_dims(t);
        h.str0(name);
        h.u32le(static_cast<uint32_t>(n_dims));
        for (int d = 0; d < n_dims; ++d) {
            h.u64le(static_cast<uint64_t>(t->ne[d]));
        }
    }

    if (const auto tokens = model.get_str_array("tokenizer.ggml.tokens")) {
        for (const auto & tok : *tokens) {
            h.str0(tok);
        }
    }

    for (const auto & [name, i] : tensors) {
        const ggml_tensor * t = model.tensor(i);
        if (t->type == GGML_TYPE_F32 && ggml_n_dims(t) == 1) {
            const auto data = model.read_tensor_data(i);
            h.bytes(data.data(), data.size());
        }
    }

    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h.value()));
    return std::string("fnv1a64:") + hex;
}

}  // namespace lg

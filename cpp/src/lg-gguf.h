// Typed, checked access to GGUF files. ggml's own getters assert on a type mismatch (which would kill the
// host process), so every read here checks the type first and reports the file and key instead.
#pragma once

#include "ggml.h"
#include "gguf.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lg {

class gguf_file {
  public:
    // what: how the file is named in messages ("model", "guard").
    gguf_file(const std::string & path, const std::string & what);
    ~gguf_file();
    gguf_file(const gguf_file &) = delete;
    gguf_file & operator=(const gguf_file &) = delete;

    const std::string & path() const { return path_; }
    const gguf_context * ctx() const { return ctx_; }

    bool has(const std::string & key) const;
    std::optional<std::string> get_str(const std::string & key) const;
    std::optional<uint32_t> get_u32(const std::string & key) const;
    std::optional<float> get_f32(const std::string & key) const;
    std::optional<bool> get_bool(const std::string & key) const;
    std::optional<std::vector<std::string>> get_str_array(const std::string & key) const;
    std::optional<std::vector<float>> get_f32_array(const std::string & key) const;
    // Exactly UINT32 elements: llama.cpp's LoRA loader refuses any other type for its token-id arrays.
    std::optional<std::vector<uint32_t>> get_u32_array(const std::string & key) const;
    // Any scalar or array as text, for display.
    std::optional<std::string> get_as_text(const std::string & key) const;
    // Fails unless every key, string value and tensor name is UTF-8, as GGUF requires: they reach messages and
    // Python strings, where other bytes would raise a decoding error instead of the file's own error.
    void require_utf8() const;

    // Tensors, with shapes from the metadata (no data loaded).
    int64_t n_tensors() const;
    const ggml_tensor * tensor(int64_t i) const;
    // Reads one tensor's raw bytes from the file (checked against the file size before anything is allocated).
    std::vector<uint8_t> read_tensor_data(int64_t i) const;

  private:
    // A numeric array whose elements are exactly `element` (T its C type); `expected` names it in the error.
    template <typename T>
    std::optional<std::vector<T>> get_array(const std::string & key, gguf_type element, const char * expected) const;
    [[noreturn]] void type_error(const std::string & key, const char * expected) const;

    std::string path_;
    std::string what_;
    gguf_context * ctx_ = nullptr;
    ggml_context * meta_ = nullptr;
};

}  // namespace lg

#include "lg-gguf.h"

#include "lg-error.h"
#include "lg-text.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace lg {

gguf_file::gguf_file(const std::string & path, const std::string & what) : path_(path), what_(what) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
        fail(LG_ERR_IO, what + " file not found: " + path);
    }
    if (std::filesystem::is_directory(path, ec)) {
        fail(LG_ERR_IO, what + " path is a directory, expected a .gguf file: " + path);
    }
    if (FILE * f = std::fopen(path.c_str(), "rb")) {
        char magic[4] = {};
        const size_t n = std::fread(magic, 1, 4, f);
        std::fclose(f);
        if (n != 4 || magic[0] != 'G' || magic[1] != 'G' || magic[2] != 'U' || magic[3] != 'F') {
            fail(LG_ERR_FORMAT, what + " file is not a GGUF file (bad magic): " + path);
        }
    } else {
        fail(LG_ERR_IO, what + " file is not readable: " + path);
    }
    gguf_init_params params = {/*no_alloc =*/true, /*ctx =*/&meta_};
    ctx_ = gguf_init_from_file(path.c_str(), params);
    if (!ctx_) {
        fail(LG_ERR_FORMAT, what + " file is truncated or corrupt (GGUF header or tensor index unreadable): " + path);
    }
}

gguf_file::~gguf_file() {
    if (ctx_) {
        gguf_free(ctx_);
    }
    if (meta_) {
        ggml_free(meta_);
    }
}

void gguf_file::type_error(const std::string & key, const char * expected) const {
    fail(LG_ERR_FORMAT, what_ + " file " + path_ + ": key '" + key + "' must be " + expected);
}

bool gguf_file::has(const std::string & key) const { return gguf_find_key(ctx_, key.c_str()) >= 0; }

std::optional<std::string> gguf_file::get_str(const std::string & key) const {
    const int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0) {
        return std::nullopt;
    }
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_STRING) {
        type_error(key, "a string");
    }
    return std::string(gguf_get_val_str(ctx_, id));
}

std::optional<uint32_t> gguf_file::get_u32(const std::string & key) const {
    const int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0) {
        return std::nullopt;
    }
    switch (gguf_get_kv_type(ctx_, id)) {
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(ctx_, id);
        case GGUF_TYPE_INT32: {
            const int32_t v = gguf_get_val_i32(ctx_, id);
            if (v < 0) {
                type_error(key, "a non-negative integer");
            }
            return static_cast<uint32_t>(v);
        }
        case GGUF_TYPE_UINT64: {
            const uint64_t v = gguf_get_val_u64(ctx_, id);
            if (v > UINT32_MAX) {
                type_error(key, "a 32-bit integer");
            }
            return static_cast<uint32_t>(v);
        }
        default: type_error(key, "an unsigned integer");
    }
}

std::optional<float> gguf_file::get_f32(const std::string & key) const {
    const int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0) {
        return std::nullopt;
    }
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_FLOAT32) {
        type_error(key, "a float32");
    }
    return gguf_get_val_f32(ctx_, id);
}

std::optional<bool> gguf_file::get_bool(const std::string & key) const {
    const int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0) {
        return std::nullopt;
    }
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_BOOL) {
        type_error(key, "a bool");
    }
    return gguf_get_val_bool(ctx_, id);
}

std::optional<std::vector<std::string>> gguf_file::get_str_array(const std::string & key) const {
    const int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0) {
        return std::nullopt;
    }
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx_, id) != GGUF_TYPE_STRING) {
        type_error(key, "an array of strings");
    }
    const size_t n = gguf_get_arr_n(ctx_, id);
    std::vector<std::string> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        out.emplace_back(gguf_get_arr_str(ctx_, id, i));
    }
    return out;
}

template <typename T>
std::optional<std::vector<T>> gguf_file::get_array(const std::string & key, gguf_type element,
                                                   const char * expected) const {
    const int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0) {
        return std::nullopt;
    }
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx_, id) != element) {
        type_error(key, expected);
    }
    const size_t n = gguf_get_arr_n(ctx_, id);
    const auto * data = static_cast<const T *>(gguf_get_arr_data(ctx_, id));
    return std::vector<T>(data, data + n);
}

std::optional<std::vector<float>> gguf_file::get_f32_array(const std::string & key) const {
    return get_array<float>(key, GGUF_TYPE_FLOAT32, "an array of float32");
}

std::optional<std::vector<uint32_t>> gguf_file::get_u32_array(const std::string & key) const {
    return get_array<uint32_t>(key, GGUF_TYPE_UINT32, "an array of uint32");
}

std::optional<std::string> gguf_file::get_as_text(const std::string & key) const {
    const int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0) {
        return std::nullopt;
    }
    const gguf_type type = gguf_get_kv_type(ctx_, id);
    switch (type) {
        case GGUF_TYPE_STRING: return std::string(gguf_get_val_str(ctx_, id));
        case GGUF_TYPE_BOOL: return std::string(gguf_get_val_bool(ctx_, id) ? "true" : "false");
        case GGUF_TYPE_UINT32: return std::to_string(gguf_get_val_u32(ctx_, id));
        case GGUF_TYPE_INT32: return std::to_string(gguf_get_val_i32(ctx_, id));
        case GGUF_TYPE_UINT64: return std::to_string(gguf_get_val_u64(ctx_, id));
        case GGUF_TYPE_FLOAT32: return std::to_string(gguf_get_val_f32(ctx_, id));
        case GGUF_TYPE_ARRAY: {
            if (gguf_get_arr_type(ctx_, id) != GGUF_TYPE_STRING) {
                return std::string("[") + std::to_string(gguf_get_arr_n(ctx_, id)) + " values]";
            }
            std::string out;
            const std::vector<std::string> items = *get_str_array(key);  // a named copy: range-for over *temporary dangles
            for (const auto & s : items) {
                out += (out.empty() ? "" : ",") + s;
            }
            return out;
        }
        default: return std::string("<") + gguf_type_name(type) + ">";
    }
}

void gguf_file::require_utf8() const {
    const auto require = [&](const char * text, const std::string & where) {
        if (invalid_utf8_offset(text) != std::string_view::npos) {
            fail(LG_ERR_FORMAT, what_ + " file " + path_ + ": " + where + " is not UTF-8: the file is corrupt");
        }
    };
    for (int64_t id = 0; id < gguf_get_n_kv(ctx_); ++id) {
        const std::string n = std::to_string(id);
        require(gguf_get_key(ctx_, id), "the name of key #" + n);
        const std::string key = gguf_get_key(ctx_, id);
        const gguf_type type = gguf_get_kv_type(ctx_, id);
        if (type == GGUF_TYPE_STRING) {
            require(gguf_get_val_str(ctx_, id), "the value of key '" + key + "'");
        } else if (type == GGUF_TYPE_ARRAY && gguf_get_arr_type(ctx_, id) == GGUF_TYPE_STRING) {
            for (size_t k = 0; k < gguf_get_arr_n(ctx_, id); ++k) {
                require(gguf_get_arr_str(ctx_, id, k), "item " + std::to_string(k) + " of key '" + key + "'");
            }
        }
    }
    for (int64_t i = 0; i < n_tensors(); ++i) {
        require(gguf_get_tensor_name(ctx_, i), "the name of tensor #" + std::to_string(i));
    }
}

int64_t gguf_file::n_tensors() const { return gguf_get_n_tensors(ctx_); }

const ggml_tensor * gguf_file::tensor(int64_t i) const {
    return ggml_get_tensor(meta_, gguf_get_tensor_name(ctx_, i));
}

std::vector<uint8_t> gguf_file::read_tensor_data(int64_t i) const {
    const size_t offset = gguf_get_data_offset(ctx_) + gguf_get_tensor_offset(ctx_, i);
    const size_t size = gguf_get_tensor_size(ctx_, i);
    std::error_code ec;
    const uintmax_t file_size = std::filesystem::file_size(path_, ec);
    // A shape can claim far more bytes than the file holds: refuse before allocating them.
    if (ec || offset > file_size || size > file_size - offset) {
        fail(LG_ERR_FORMAT, what_ + " file is truncated: tensor '" + gguf_get_tensor_name(ctx_, i) +
                                "' lies past the end of " + path_);
    }
    std::ifstream in(path_, std::ios::binary);
    std::vector<uint8_t> data(size);
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(reinterpret_cast<char *>(data.data()), static_cast<std::streamsize>(size));
    if (!in || static_cast<size_t>(in.gcount()) != size) {
        fail(LG_ERR_FORMAT, what_ + " file is truncated: tensor '" + gguf_get_tensor_name(ctx_, i) +
                                "' lies past the end of " + path_);
    }
    return data;
}

}  // namespace lg

#include "lg-guard-file.h"

#include "lg-error.h"
#include "lg-gguf.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <set>
#include <string_view>

namespace lg {

namespace {

const std::string k_prefix = "loraguard.";
const std::string k_invocation_tokens = "adapter.alora.invocation_tokens";  // llama.cpp's own key
// Invocations are a few marker tokens; a cap keeps a damaged file from making every guard call long.
constexpr size_t k_max_invocation_tokens = 64;

template <typename T> T require(const std::optional<T> & value, const gguf_file & file, const std::string & key) {
    if (!value) {
        fail(LG_ERR_FORMAT, "guard file " + file.path() + " lacks key '" + key +
                                "': rebuild it with loraguard-convert guard");
    }
    return *value;
}

// The keys llama.cpp's LoRA loader reads with asserting getters must have the type it expects.
void check_stock_lora_keys(const gguf_file & file, const lg_model & model) {
    const auto type = file.get_str("general.type");
    const auto adapter_type = file.get_str("adapter.type");
    if (type.value_or("") != "adapter" || adapter_type.value_or("") != "lora") {
        fail(LG_ERR_FORMAT, "guard file " + file.path() +
                                " is not a LoRA adapter (general.type must be 'adapter' and adapter.type 'lora'); a base model "
                                "goes in the model argument");
    }
    const std::string arch = file.get_str("general.architecture").value_or("");
    if (arch != model.architecture) {
        const std::string base_name = file.get_str("loraguard.base.name").value_or("");
        fail(LG_ERR_MISMATCH, "guard was built for " + (base_name.empty() ? std::string() : base_name + ", ") +
                                  "architecture '" + arch + "'; model " + model.name + " is '" + model.architecture +
                                  "': use the base model the guard was trained on");
    }
    // Absent means llama.cpp's default; NaN or infinity would turn every score into NaN.
    if (!std::isfinite(file.get_f32("adapter.lora.alpha").value_or(0.0f))) {
        fail(LG_ERR_FORMAT, "guard file " + file.path() + ": adapter.lora.alpha is NaN or infinite");
    }
}

// The aLoRA keys (docs/guard-format.md), checked before llama.cpp's loader reads them: it throws on a wrong
// type and trusts the ids, which index the vocabulary.
void read_activation(const gguf_file & file, const lg_model & model, guard_spec & spec) {
    const std::string & path = file.path();
    const auto ids = file.get_u32_array(k_invocation_tokens);
    const auto activation = file.get_str(k_prefix + "activation");
    if (!ids && !activation) {
        if (spec.version > 1) {
            fail(LG_ERR_FORMAT, "guard file " + path + " has format version " + std::to_string(spec.version) +
                                    " (activated LoRA) but no " + k_prefix + "activation key: the file is damaged; "
                                    "rebuild it with loraguard-convert guard");
        }
        return;
    }
    if (!ids || !activation) {
        fail(LG_ERR_FORMAT, "guard file " + path + " has " + (ids ? k_invocation_tokens : k_prefix + "activation") +
                                " without " + (ids ? k_prefix + "activation = alora" : k_invocation_tokens) +
                                ": an activated LoRA (aLoRA) guard needs both; rebuild it with loraguard-convert guard");
    }
    if (*activation != "alora") {
        fail(LG_ERR_FORMAT, "guard file " + path + ": unknown " + k_prefix + "activation '" + *activation +
                                "' (expected alora, or no key for a plain LoRA guard)");
    }
    if (spec.version < 2) {
        fail(LG_ERR_FORMAT, "guard file " + path + " is an activated LoRA (aLoRA) with format version " +
                                std::to_string(spec.version) + ", aLoRA guards are version 2: the file is damaged; "
                                "rebuild it with loraguard-convert guard");
    }
    if (ids->empty() || ids->size() > k_max_invocation_tokens) {
        fail(LG_ERR_FORMAT, "guard file " + path + ": " + k_invocation_tokens + " has " + std::to_string(ids->size()) +
                                " tokens, an invocation has 1 to " + std::to_string(k_max_invocation_tokens));
    }
    const uint32_t n_vocab = static_cast<uint32_t>(llama_vocab_n_tokens(model.vocab));
    for (const uint32_t id : *ids) {
        if (id >= n_vocab) {
            fail(LG_ERR_MISMATCH, "guard file " + path + ": invocation token id " + std::to_string(id) +
                                      " is outside the vocabulary of model " + model.name + " (" +
                                      std::to_string(n_vocab) + " tokens): the guard was built for another tokenizer");
        }
    }
    spec.invocation.assign(ids->begin(), ids->end());
    spec.invocation_text = require(file.get_str(k_prefix + "alora.invocation"), file, k_prefix + "alora.invocation");
    const std::vector<llama_token> retokenized =
        tokenize(model.vocab, spec.invocation_text, /*add_special=*/false, /*parse_special=*/true);
    if (retokenized != spec.invocation) {
        const auto list = [](const std::vector<llama_token> & v) {
            std::string out;
            for (const llama_token t : v) {
                out += (out.empty() ? "" : ",") + std::to_string(t);
            }
            return "[" + out + "]";
        };
        fail(LG_ERR_MISMATCH, "guard file " + path + ": its invocation text tokenizes to " + list(retokenized) +
                                  " with model " + model.name + "'s tokenizer, but the guard stores ids " +
                                  list(spec.invocation) + ": the guard was made for another tokenizer");
    }
    if (spec.pool != pooling::last) {
        fail(LG_ERR_FORMAT, "guard file " + path + ": an activated LoRA guard reads the invocation's last token, so "
                                "its pooling must be 'last'");
    }
}

// The types llama.cpp's convert_lora_to_gguf.py writes. The LoRA matmuls need a type with CPU matmul kernels;
// others (I32, ...) pass llama.cpp's loader and then abort or crash the first decode.
bool is_lora_type(ggml_type type) {
    return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16 || type == GGML_TYPE_Q8_0;
}

// What llama.cpp's LoRA loader leaves unchecked and its matmuls assert on (or silently turn into NaN scores):
// a tensor that is not a matrix, a type without kernels, non-finite values.
void check_lora_tensor(const gguf_file & file, int64_t i) {
    const ggml_tensor * t = file.tensor(i);
    const std::string name = t->name;
    if (t->ne[2] != 1 || t->ne[3] != 1) {
        fail(LG_ERR_FORMAT, "guard file " + file.path() + ": tensor '" + name + "' has " +
                                std::to_string(ggml_n_dims(t)) + " dimensions, a LoRA tensor is a matrix");
    }
    if (!is_lora_type(t->type)) {
        fail(LG_ERR_FORMAT, "guard file " + file.path() + ": tensor '" + name + "' has type " +
                                ggml_type_name(t->type) + ", LoRA tensors must be F32, F16, BF16 or Q8_0");
    }
    if (ggml_nelements(t) == 0) {
        fail(LG_ERR_FORMAT, "guard file " + file.path() + ": tensor '" + name + "' is empty (rank 0)");
    }
    const std::vector<uint8_t> data = file.read_tensor_data(i);
    if (!ggml_validate_row_data(t->type, data.data(), data.size())) {
        fail(LG_ERR_FORMAT, "guard file " + file.path() + ": tensor '" + name + "' has NaN or infinite values");
    }
}

// Every tensor must be one half of a LoRA pair on a 2-D base tensor with matching shape.
void check_lora_tensors(const gguf_file & file, const lg_model & model, guard_spec & spec) {
    struct pair_shapes {
        const ggml_tensor * a = nullptr;
        const ggml_tensor * b = nullptr;
    };
    std::map<std::string, pair_shapes> pairs;
    for (int64_t i = 0; i < file.n_tensors(); ++i) {
        const ggml_tensor * t = file.tensor(i);
        const std::string name = t->name;
        const auto ends_with = [&](const std::string & suffix) {
            return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
        };
        if (ends_with(".lora_a")) {
            pairs[name.substr(0, name.size() - 7)].a = t;
        } else if (ends_with(".lora_b")) {
            pairs[name.substr(0, name.size() - 7)].b = t;
        } else {
            fail(LG_ERR_FORMAT, "guard file " + file.path() + " has tensor '" + name +
                                    "', which is not a LoRA pair (.lora_a/.lora_b): stock llama.cpp would reject it");
        }
        check_lora_tensor(file, i);
    }
    if (pairs.empty()) {
        fail(LG_ERR_FORMAT, "guard file " + file.path() + " has no LoRA tensors");
    }
    int32_t rank = 0;
    for (const auto & [base_name, p] : pairs) {
        if (!p.a || !p.b) {
            fail(LG_ERR_FORMAT, "guard file " + file.path() + ": LoRA pair for '" + base_name + "' is missing its " +
                                    (p.a ? "lora_b" : "lora_a") + " tensor");
        }
        const auto it = model.matrix_shapes.find(base_name);
        if (it == model.matrix_shapes.end()) {
            fail(LG_ERR_MISMATCH, "guard adapts tensor '" + base_name + "', which model " + model.name +
                                      " does not have: the guard was built for another base model");
        }
        const auto [ne0, ne1] = it->second;
        if (p.a->ne[0] != ne0 || p.b->ne[1] != ne1 || p.a->ne[1] != p.b->ne[0]) {
            fail(LG_ERR_MISMATCH, "guard tensor '" + base_name + "' has shape A[" + std::to_string(p.a->ne[0]) + "," +
                                      std::to_string(p.a->ne[1]) + "] B[" + std::to_string(p.b->ne[0]) + "," +
                                      std::to_string(p.b->ne[1]) + "], model " + model.name + " needs [" +
                                      std::to_string(ne0) + ",r] [r," + std::to_string(ne1) +
                                      "]: the guard was built for another base model");
        }
        rank = std::max(rank, static_cast<int32_t>(p.a->ne[1]));
        spec.lora_params += static_cast<uint64_t>(ggml_nelements(p.a) + ggml_nelements(p.b));
    }
    spec.lora_rank = rank;
}

pooling parse_pooling(const std::string & name, const gguf_file & file) {
    if (name == "last") {
        return pooling::last;
    }
    if (name == "mean") {
        return pooling::mean;
    }
    if (name == "cls") {
        return pooling::cls;
    }
    fail(LG_ERR_FORMAT, "guard file " + file.path() + ": unknown pooling '" + name + "' (expected last, mean or cls)");
}

// Labels name the scores a caller looks up: each must be present once.
void check_labels(const std::vector<std::string> & labels, const gguf_file & file) {
    std::set<std::string_view> seen;
    for (size_t i = 0; i < labels.size(); ++i) {
        if (labels[i].empty()) {
            fail(LG_ERR_FORMAT, "guard file " + file.path() + ": label " + std::to_string(i) + " is empty");
        }
        if (!seen.insert(labels[i]).second) {
            fail(LG_ERR_FORMAT, "guard file " + file.path() + ": label '" + labels[i] + "' appears twice");
        }
    }
}

// A template without a placeholder would score the same fixed text whatever the user wrote.
std::string read_template(const gguf_file & file, const std::string & key, std::initializer_list<const char *> holes) {
    std::string text = require(file.get_str(k_prefix + key), file, k_prefix + key);
    for (const char * hole : holes) {
        if (text.find(hole) == std::string::npos) {
            fail(LG_ERR_FORMAT, "guard file " + file.path() + ": " + k_prefix + key + " lacks " + hole +
                                    ", so the guard would never read the text it judges: rebuild it with a template "
                                    "that contains it");
        }
    }
    return text;
}

}  // namespace

guard_spec read_guard_file(const std::string & path, const lg_model & model) {
    const gguf_file file(path, "guard");
    file.require_utf8();
    check_stock_lora_keys(file, model);

    guard_spec spec;
    const auto version = file.get_u32(k_prefix + "version");
    if (!version) {
        fail(LG_ERR_FORMAT, "guard file " + path +
                                " is a plain LoRA adapter without a loraguard head: make a guard from a checkpoint with "
                                "loraguard-convert guard");
    }
    spec.version = *version;
    if (spec.version > LORAGUARD_FORMAT_VERSION) {
        fail(LG_ERR_FORMAT, "guard file " + path + " has format version " + std::to_string(spec.version) +
                                ", this loraguard reads up to " + std::to_string(LORAGUARD_FORMAT_VERSION) +
                                ": upgrade loraguard");
    }

    const std::string base_arch = require(file.get_str(k_prefix + "base.architecture"), file, k_prefix + "base.architecture");
    const uint32_t base_n_embd = require(file.get_u32(k_prefix + "base.n_embd"), file, k_prefix + "base.n_embd");
    const uint32_t base_n_layer = require(file.get_u32(k_prefix + "base.n_layer"), file, k_prefix + "base.n_layer");
    const std::string base_fp = require(file.get_str(k_prefix + "base.fingerprint"), file, k_prefix + "base.fingerprint");
    const std::string base_name = file.get_str(k_prefix + "base.name").value_or("?");
    if (base_arch != model.architecture || static_cast<int32_t>(base_n_embd) != model.n_embd ||
        static_cast<int32_t>(base_n_layer) != model.n_layer) {
        fail(LG_ERR_MISMATCH, "guard was trained for " + base_name + " (arch " + base_arch + " n_embd " +
                                  std::to_string(base_n_embd) + " n_layer " + std::to_string(base_n_layer) + "), model " +
                                  model.name + " is arch " + model.architecture + " n_embd " + std::to_string(model.n_embd) +
                                  " n_layer " + std::to_string(model.n_layer) + ": load the guard's own base model");
    }
    if (base_fp != model.fingerprint) {
        fail(LG_ERR_MISMATCH, "guard was trained for base " + base_name + " (fingerprint " + base_fp + "), model " +
                                  model.name + " has fingerprint " + model.fingerprint +
                                  ": same architecture, different weights; load the guard's own base model");
    }
    check_lora_tensors(file, model, spec);

    spec.labels = require(file.get_str_array(k_prefix + "labels"), file, k_prefix + "labels");
    spec.thresholds = require(file.get_f32_array(k_prefix + "thresholds"), file, k_prefix + "thresholds");
    spec.head_weight = require(file.get_f32_array(k_prefix + "head.weight"), file, k_prefix + "head.weight");
    spec.head_bias = require(file.get_f32_array(k_prefix + "head.bias"), file, k_prefix + "head.bias");
    const size_t n_labels = spec.labels.size();
    if (n_labels == 0 || spec.thresholds.size() != n_labels || spec.head_bias.size() != n_labels ||
        spec.head_weight.size() != n_labels * static_cast<size_t>(model.n_embd)) {
        fail(LG_ERR_FORMAT, "guard file " + path + ": head does not fit: " + std::to_string(n_labels) + " labels, " +
                                std::to_string(spec.thresholds.size()) + " thresholds, " +
                                std::to_string(spec.head_bias.size()) + " biases, " +
                                std::to_string(spec.head_weight.size()) + " weights (expected labels x n_embd = " +
                                std::to_string(n_labels * model.n_embd) + ")");
    }
    check_labels(spec.labels, file);
    const auto finite = [](float v) { return std::isfinite(v); };
    if (!std::all_of(spec.head_weight.begin(), spec.head_weight.end(), finite) ||
        !std::all_of(spec.head_bias.begin(), spec.head_bias.end(), finite)) {
        fail(LG_ERR_FORMAT, "guard file " + path + ": head has NaN or infinite weights");
    }
    // A label is flagged when its probability reaches the threshold; NaN would never flag it.
    if (!std::all_of(spec.thresholds.begin(), spec.thresholds.end(), [](float v) { return v >= 0.0f && v <= 1.0f; })) {
        fail(LG_ERR_FORMAT, "guard file " + path + ": thresholds must be probabilities in [0, 1] (NaN is not)");
    }
    spec.pool = parse_pooling(require(file.get_str(k_prefix + "pooling"), file, k_prefix + "pooling"), file);
    if ((spec.pool == pooling::last) == model.is_encoder) {
        fail(LG_ERR_MISMATCH, std::string("guard pools '") + (spec.pool == pooling::last ? "last" : "mean/cls") +
                                  "', which does not suit " + (model.is_encoder ? "encoder" : "decoder") + " model " +
                                  model.name);
    }
    read_activation(file, model, spec);
    spec.template_prompt = read_template(file, "template.prompt", {"{prompt}"});
    spec.template_pair = read_template(file, "template.pair", {"{prompt}", "{response}"});
    spec.parse_special = file.get_bool(k_prefix + "template.parse_special").value_or(false);
    spec.measured_types = file.get_str_array(k_prefix + "base.measured_types").value_or(std::vector<std::string>{});
    if (!spec.measured_types.empty() &&
        std::find(spec.measured_types.begin(), spec.measured_types.end(), model.file_type) == spec.measured_types.end()) {
        std::string types;
        for (const auto & t : spec.measured_types) {
            types += (types.empty() ? "" : ", ") + t;
        }
        spec.warning = "guard accuracy was measured on base types " + types + ", model " + model.name + " is " +
                       model.file_type + ": scores may drift; prefer a measured type";
    }

    for (int64_t i = 0; i < gguf_get_n_kv(file.ctx()); ++i) {
        const std::string key = gguf_get_key(file.ctx(), i);
        if (key.rfind(k_prefix, 0) == 0 && key.rfind(k_prefix + "head.", 0) != 0) {
            spec.meta[key.substr(k_prefix.size())] = file.get_as_text(key).value_or("");
        }
    }
    return spec;
}

}  // namespace lg

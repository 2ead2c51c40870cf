// A guard GGUF read and checked against the model it will run on, before llama.cpp's LoRA loader sees it
// (that loader asserts, killing the process, on some malformed keys).
#pragma once

#include "lg-model.h"

#include <map>
#include <string>
#include <vector>

namespace lg {

enum class pooling { last, mean, cls };

struct guard_spec {
    uint32_t version = 0;
    std::vector<std::string> labels;
    std::vector<float> thresholds;
    std::vector<float> head_weight;  // n_labels x n_embd, row-major
    std::vector<float> head_bias;
    pooling pool = pooling::last;
    std::string template_prompt;
    std::string template_pair;
    bool parse_special = false;
    int32_t lora_rank = 0;
    uint64_t lora_params = 0;
    std::vector<std::string> measured_types;
    // Activated LoRA (format version 2): the adapter applies only from the first invocation token on, so the
    // input before it is the base model's own K/V. Empty for a plain LoRA guard.
    std::vector<llama_token> invocation;
    std::string invocation_text;
    std::string warning;  // non-fatal: e.g. a base type the guard was not measured on
    // Every loraguard.* key as text, without the prefix, for lg_guard_meta.
    std::map<std::string, std::string> meta;
};

guard_spec read_guard_file(const std::string & path, const lg_model & model);

}  // namespace lg

// The chat path: the base model with no adapter, in a context of its own, exactly as stock llama.cpp runs it.
#pragma once

#include "lg-model.h"

#include <mutex>
#include <string>
#include <vector>

struct lg_chat {
    lg_chat(lg_model & model, const lg_chat_params & params);
    ~lg_chat();
    lg_chat(const lg_chat &) = delete;
    lg_chat & operator=(const lg_chat &) = delete;

    std::string format(const lg_message * messages, size_t n) const;
    std::string generate(const std::string & prompt, const lg_generate_params & params);
    // Appends tokens in n_batch chunks, only the last token of each chunk an output (as llama-cpp-python does).
    void decode(const llama_token * tokens, size_t n, bool clear);
    const float * last_logits() const;

    lg_model & model;
    lg_chat_params params;
    llama_context * ctx = nullptr;
    uint32_t n_ctx = 0;
    std::mutex mutex;

  private:
    size_t n_past = 0;
};

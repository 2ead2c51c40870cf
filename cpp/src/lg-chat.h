// The chat path: the base model with no adapter, in a context of its own, exactly as stock llama.cpp runs it.
#pragma once

#include "lg-capture.h"
#include "lg-model.h"

#include <atomic>
#include <mutex>
#include <string_view>
#include <string>
#include <thread>
#include <vector>

struct lg_guard;

struct lg_chat {
    lg_chat(lg_model & model, const lg_chat_params & params);
    ~lg_chat();
    lg_chat(const lg_chat &) = delete;
    lg_chat & operator=(const lg_chat &) = delete;

    std::string format(const lg_message * messages, size_t n) const;
    // Token ids of messages: only the template's own markers are special tokens (lg_chat_tokenize).
    std::vector<llama_token> tokenize(const lg_message * messages, size_t n) const;
    // Trusted raw text, special-token text parsed as llama.cpp does.
    std::vector<llama_token> tokenize_raw(std::string_view prompt) const;
    struct generation {
        std::string text;
        std::string flagged;  // why the guard stopped it ("" when it did not)
    };
    // Clears the context, evaluates the prompt tokens and samples until a stop condition; with params.guard,
    // judges the prompt and the reply as it grows (lg-chat-guard.cpp). Given the messages the prompt was made of,
    // every verdict also reads the lines of the user's messages alone, as classifying a prompt does.
    generation generate(const std::vector<llama_token> & prompt, const lg_generate_params & params,
                        const lg_message * messages = nullptr, size_t n_messages = 0);
    // Appends tokens in n_batch chunks, only the last token of each chunk an output (as llama-cpp-python does).
    void decode(const llama_token * tokens, size_t n, bool clear);
    const float * last_logits() const;
    size_t n_tokens() const { return n_past; }

    // Guarding the context in place with an aLoRA guard (lg-chat-guard.cpp).
    // Fails unless guard can judge this chat: an aLoRA guard on this very model, a memory that can drop a tail.
    void check_guard(const lg_guard & guard) const;
    // Judges the context so far: n_labels logits. The chat's cells, positions and next logits are left as they were.
    void classify(lg_guard & guard, float * logits);

    // Holds the chat for one call from the C API. The chat's own callbacks (on_token, on_verdict) run inside a
    // generation that holds it already: there calls that leave the chat as it was (classify) go on without
    // locking, and calls that would change it under the generation fail instead of deadlocking.
    std::unique_lock<std::mutex> enter(bool allowed_in_callback, const char * what);

    lg_model & model;
    lg_chat_params params;
    llama_context * ctx = nullptr;
    uint32_t n_ctx = 0;
    std::mutex mutex;
    std::atomic<bool> cancel_requested{false};

  private:
    // The text the template makes of messages whose contents are values[i] (the model's template, or the
    // contents joined by newlines for a model without one).
    std::string render(const lg_message * messages, const std::vector<std::string> & values) const;
    // The guard's invocation decoded after the chat's cells and removed again: the verdict on what the chat read.
    void classify_in_place(lg_guard & guard, float * logits);
    // The max logit per label over the lines of the user's messages (lg::text_lines), each read alone in the
    // guard's own context; empty when no user message has two lines or the guard reads text whole.
    static std::vector<float> read_user_lines(lg_guard & guard, const lg_message * messages, size_t n);

    size_t n_past = 0;
    std::vector<llama_token> history;  // the n_past tokens decoded, for reading them folded (lg-chat-guard.cpp)
    lg::hidden_capture capture;  // active only while a guard reads the invocation's state
    std::atomic<std::thread::id> generating_thread{};
};

// The guard path: the model plus the guard's LoRA delta in a context of its own, and the linear head.
#pragma once

#include "lg-capture.h"
#include "lg-guard-file.h"
#include "lg-model.h"
#include "lg-template.h"

#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct lg_guard {
    lg_guard(lg_model & model, const std::string & path, const lg_guard_params & params);
    ~lg_guard();
    lg_guard(const lg_guard &) = delete;
    lg_guard & operator=(const lg_guard &) = delete;

    // The token ids one input runs as, read as written (template applied, an aLoRA guard's invocation after it;
    // no overflow handling and no second reading).
    std::vector<llama_token> tokenize(const lg_input & input) const;
    // The sequences one input is scored as, its overflow policy applied: its decoded reading's after its own, then
    // (a text judged alone, folded) each of its lines' (lg::text_lines), read the same two ways.
    std::vector<std::vector<llama_token>> sequences(const lg_input & input) const;
    void classify(const lg_input * inputs, size_t n, float * logits);
    // Scores one token sequence given as segments (slot < 0: kept whole in every window, the rest cut by the
    // overflow policy), the invocation appended: n_labels logits. what names it in a too-long error.
    void classify_segments(const std::vector<lg::token_template::segment> & segments, const std::string & what,
                           float * logits);
    // Sigmoid of the logits and the guard's thresholds: the one place the verdict rule lives.
    void verdicts(const float * logits, size_t n, float * probs, uint8_t * flagged) const;
    // The head on one pooled state (n_embd floats): n_labels logits.
    void head(const float * state, float * logits, size_t input_index) const;

    // Activated LoRA (lg-alora.cpp): true for a guard whose adapter applies from its invocation on.
    bool is_alora() const { return !spec.invocation.empty(); }
    // The guard's adapter on ctx (on) or no adapter (off). llama.cpp rebuilds the context's scheduler at the next
    // decode after a change; the same state again costs nothing.
    void set_adapter(llama_context * ctx, bool on) const;
    // Decodes the invocation with the adapter on, after the prefix of sequence i that holds starts[i] tokens,
    // and captures the final-norm state of each invocation's last token into capture (one row per sequence).
    void invoke(llama_context * ctx, llama_batch & batch, const std::vector<llama_pos> & starts,
                lg::hidden_capture & capture) const;

    lg_model & model;
    lg::guard_spec spec;
    lg::token_template prompt_template;
    lg::token_template pair_template;
    lg_guard_params params;
    llama_adapter_lora * adapter = nullptr;
    llama_context * ctx = nullptr;
    uint32_t n_ctx = 0;

  private:
    // The guard's own context, its batch and capture (one decode of n_ctx tokens, the adapter set unless aLoRA).
    void make_context();
    struct job {
        size_t input;
        std::vector<llama_token> tokens;
    };
    std::vector<job> make_jobs(const lg_input * inputs, size_t n) const;
    // A prompt and its reply as the guard reads them: checked, then folded unless params.text_form says exact.
    struct read_text {
        std::string prompt;
        std::optional<std::string> response;
    };
    read_text read(const lg_input & input) const;
    // Fails with LG_ERR_TOO_LONG, naming field, where text is past params.max_text_bytes.
    void check_size(std::string_view text, const char * field, const char * what) const;
    // The same text read the second time (lg::decoded_reading: base64 decoded, leetspeak as letters), if folding
    // is on and that changes it.
    std::optional<read_text> decoded_reading(const read_text & text) const;
    std::vector<llama_token> tokenize(const read_text & text) const;
    // The sequences one input is scored as: each reading's tokens if they fit, else cut by the overflow policy.
    std::vector<std::vector<llama_token>> fit(const lg_input & input, size_t input_index) const;
    std::vector<std::vector<llama_token>> fit(const read_text & text, const std::string & what) const;
    // Segments of n_whole tokens (invocation included) that do not fit, cut by the overflow policy: the
    // invocation and segments with slot < 0 whole in every sequence, the rest windowed or kept at its end.
    std::vector<std::vector<llama_token>> cut(const std::vector<lg::token_template::segment> & segments,
                                              size_t n_whole, const std::string & what) const;
    // Scores jobs for n inputs: n * n_labels logits, the max over an input's windows.
    void score(const std::vector<job> & jobs, size_t n, float * logits);
    // Runs jobs [begin, end) in one decode; appends one pooled state (n_embd floats) per job to states.
    void run_decode(const std::vector<job> & jobs, size_t begin, size_t end, std::vector<float> & states);

    lg::hidden_capture capture;
    llama_batch batch{};
    std::mutex mutex;  // one decode at a time on this context
};

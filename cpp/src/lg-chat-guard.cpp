// Judging a chat's context in place with an activated LoRA guard: the chat's cells hold the base model's K/V of
// the conversation, which is exactly what an aLoRA guard reads before its invocation, so a verdict costs the
// invocation's tokens instead of a second read of the whole conversation. Where the conversation holds text that
// the guard reads folded (lg_text_form), the cache holds what the chat model read instead, and the guard reads the
// folded conversation in its own context; where it holds leetspeak or base64, the guard also reads it decoded there.
// A generation from messages also reads the lines of the user's messages alone there, once, for all its verdicts.
#include "lg-chat.h"

#include "lg-decode.h"
#include "lg-error.h"
#include "lg-fold.h"
#include "lg-guard.h"
#include "lg-lines.h"
#include "lg-special.h"
#include "lg-text.h"
#include "lg-threads.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <unordered_set>

namespace {

// Folds the well-formed UTF-8 stretches of text and keeps any other byte: a reply can end inside a character, and
// a model can sample bytes that form none.
std::string fold_valid(std::string_view text) {
    std::string out;
    while (!text.empty()) {
        const size_t good = std::min(lg::invalid_utf8_offset(text), text.size());
        out += lg::fold_text(text.substr(0, good));
        if (good == text.size()) {
            break;
        }
        out += text[good];
        text.remove_prefix(good + 1);
    }
    return out;
}

// The chat's tokens as the guard reads text, in its two readings. Each run of plain tokens between special ones is
// read and tokenized again as one piece, as the chat's template tokenizes the text between its markers, and the
// special tokens are kept (whole in every window, should a reading need windows).
struct chat_readings {
    // Every run folded; empty when folding changes none: then the chat's own cache holds what the guard reads.
    std::vector<lg::token_template::segment> folded;
    // Every run folded and those with something to decode decoded (lg::decoded_reading); empty when none has.
    std::vector<lg::token_template::segment> decoded;
};

chat_readings read_chat(const llama_vocab * vocab, const std::vector<llama_token> & tokens) {
    chat_readings out;
    bool folds = false;
    bool decodes = false;
    for (size_t begin = 0, end = 0; begin < tokens.size(); begin = end) {
        const bool special = lg::is_special(vocab, tokens[begin]);
        while (end < tokens.size() && lg::is_special(vocab, tokens[end]) == special) {
            ++end;
        }
        std::vector<llama_token> run(tokens.begin() + static_cast<long>(begin), tokens.begin() + static_cast<long>(end));
        std::optional<std::vector<llama_token>> decoded_run;
        if (!special) {
            std::string text;
            for (const llama_token t : run) {
                text += lg::token_text(vocab, t);
            }
            const std::string folded = fold_valid(text);
            if (folded != text) {
                folds = true;
                run = lg::tokenize(vocab, folded, /*add_special=*/false, /*parse_special=*/false);
            }
            if (const std::optional<std::string> read = lg::decoded_reading(folded)) {
                decodes = true;
                decoded_run = lg::tokenize(vocab, *read, /*add_special=*/false, /*parse_special=*/false);
            }
        }
        const int slot = special ? -1 : 0;
        out.decoded.push_back({decoded_run ? std::move(*decoded_run) : run, slot});
        out.folded.push_back({std::move(run), slot});
    }
    if (!folds) {
        out.folded.clear();
    }
    if (!decodes) {
        out.decoded.clear();
    }
    return out;
}

}  // namespace

void lg_chat::check_guard(const lg_guard & guard) const {
    if (&guard.model != &model) {
        lg::fail(LG_ERR_MISMATCH, "the guard was loaded on another model than the chat's: load it on the chat's own "
                                  "model, whose weights and cache it reads");
    }
    if (!guard.is_alora()) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "the guard is a plain LoRA guard: its adapter changes every token's K/V, so "
                                          "it cannot read the chat's cache; classify the text with it instead, or "
                                          "use an activated LoRA (aLoRA) guard");
    }
    if (llama_model_is_recurrent(model.model) || llama_model_is_hybrid(model.model)) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "model " + model.name + " (" + model.architecture +
                                              ") keeps a recurrent state, from which a guard's invocation cannot be "
                                              "removed again: classify the text with the guard instead");
    }
}

void lg_chat::classify(lg_guard & guard, float * logits) {
    check_guard(guard);
    if (n_past == 0) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "the chat context is empty: decode or generate before judging it");
    }
    const std::vector<llama_token> & invocation = guard.spec.invocation;
    if (n_past + invocation.size() > n_ctx) {
        lg::fail(LG_ERR_TOO_LONG, "the guard's invocation (" + std::to_string(invocation.size()) +
                                      " tokens) does not fit after the chat's " + std::to_string(n_past) +
                                      " tokens in n_ctx " + std::to_string(n_ctx) +
                                      ": raise the chat's n_ctx (the chat is unchanged)");
    }
    if (guard.params.text_form == LG_TEXT_EXACT) {
        classify_in_place(guard, logits);
        return;
    }
    const chat_readings readings = read_chat(model.vocab, history);
    if (readings.folded.empty()) {
        classify_in_place(guard, logits);
    } else {
        guard.classify_segments(readings.folded, "the chat's context, folded,", logits);
    }
    // Scored beside the first reading and the max kept, as lg_guard_classify does with a text
    if (!readings.decoded.empty()) {
        std::vector<float> decoded(guard.spec.labels.size());
        guard.classify_segments(readings.decoded, "the chat's context, decoded,", decoded.data());
        for (size_t l = 0; l < decoded.size(); ++l) {
            logits[l] = std::max(logits[l], decoded[l]);
        }
    }
}

std::vector<float> lg_chat::read_user_lines(lg_guard & guard, const lg_message * messages, size_t n) {
    if (guard.params.text_form != LG_TEXT_FOLDED || !guard.params.read_lines) {
        return {};
    }
    // The cache holds each message whole, and a request on a line of its own among benign paragraphs is averaged
    // into them there; read alone, as classifying the message would read it, it is what it is.
    std::vector<std::string> lines;
    std::unordered_set<std::string> seen;  // a line repeated across messages is read once
    for (size_t i = 0; i < n; ++i) {
        if (std::string_view(messages[i].role, messages[i].role_len) != "user") {
            continue;
        }
        for (std::string & line : lg::text_lines(lg::fold_text({messages[i].content, messages[i].content_len}))) {
            if (seen.insert(line).second) {
                lines.push_back(std::move(line));
            }
        }
    }
    if (lines.empty()) {
        return {};
    }
    std::vector<lg_input> inputs(lines.size());
    for (size_t k = 0; k < lines.size(); ++k) {
        inputs[k] = {lines[k].data(), lines[k].size(), nullptr, 0};
    }
    const size_t n_labels = guard.spec.labels.size();
    std::vector<float> each(lines.size() * n_labels);
    guard.classify(inputs.data(), inputs.size(), each.data());
    std::vector<float> out(each.begin(), each.begin() + static_cast<long>(n_labels));
    for (size_t k = 1; k < lines.size(); ++k) {
        for (size_t l = 0; l < n_labels; ++l) {
            out[l] = std::max(out[l], each[k * n_labels + l]);
        }
    }
    return out;
}

void lg_chat::classify_in_place(lg_guard & guard, float * logits) {
    const std::vector<llama_token> & invocation = guard.spec.invocation;
    // The logits the chat samples its next token from: the invocation's decode overwrites llama.cpp's output buffer.
    const float * current = last_logits();
    if (!current) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "the chat has no logits to continue from: decode before judging it");
    }
    const std::vector<float> saved(current, current + llama_vocab_n_tokens(model.vocab));
    llama_memory_t memory = llama_get_memory(ctx);
    const auto end = static_cast<llama_pos>(n_past);

    std::vector<float> state;
    std::exception_ptr failure;
    {
        const lg::thread_share threads(model, ctx, params.n_threads);
        llama_batch batch = llama_batch_init(static_cast<int32_t>(invocation.size()), 0, 1);
        capture.active = true;
        try {
            guard.invoke(ctx, batch, {end}, capture);
            state = capture.rows;
        } catch (...) {
            failure = std::current_exception();  // rethrown once the chat is back as it was
        }
        capture.active = false;
        llama_batch_free(batch);
    }
    // Back as it was: the invocation's cells out, no adapter, the saved logits in llama.cpp's output row.
    llama_memory_seq_rm(memory, 0, end, -1);
    llama_set_adapters_lora(ctx, nullptr, 0, nullptr);
    float * row = llama_get_logits_ith(ctx, -1);
    if (row) {
        std::copy(saved.begin(), saved.end(), row);
    }
    if (!row || llama_memory_seq_pos_max(memory, 0) != end - 1) {
        llama_memory_clear(memory, true);
        n_past = 0;
        history.clear();
        lg::fail(LG_ERR_BACKEND, "the chat context could not be restored after the guard's invocation and was "
                                 "cleared: start the conversation again");
    }
    if (failure) {
        std::rethrow_exception(failure);
    }
    guard.head(state.data(), logits, 0);
}

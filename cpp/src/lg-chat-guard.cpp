// Judging a chat's context in place with an activated LoRA guard: the chat's cells hold the base model's K/V of
// the conversation, which is exactly what an aLoRA guard reads before its invocation, so a verdict costs the
// invocation's tokens instead of a second read of the whole conversation. Where the conversation holds text that
// the guard reads folded (lg_text_form), the cache holds what the chat model read instead, and the guard reads the
// folded conversation in its own context; where it holds leetspeak or base64, the guard also reads it decoded there.
#include "lg-chat.h"

#include "lg-error.h"
#include "lg-fold.h"
#include "lg-guard.h"
#include "lg-decode.h"
#include "lg-special.h"
#include "lg-text.h"
#include "lg-threads.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <exception>

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

// The chat's tokens as the guard reads text: each run of plain tokens between special ones read by reading and
// tokenized again as one piece, as the chat's template tokenizes the text between its markers, and the special
// tokens kept (whole in every window, should the conversation need windows). reading gives nothing for a run it
// leaves as it is; the result is empty when it leaves every run so.
std::vector<lg::token_template::segment> reread(
    const llama_vocab * vocab, const std::vector<llama_token> & tokens,
    const std::function<std::optional<std::string>(const std::string &)> & reading) {
    std::vector<lg::token_template::segment> out;
    bool changed = false;
    for (size_t begin = 0, end = 0; begin < tokens.size(); begin = end) {
        const bool special = lg::is_special(vocab, tokens[begin]);
        while (end < tokens.size() && lg::is_special(vocab, tokens[end]) == special) {
            ++end;
        }
        std::vector<llama_token> run(tokens.begin() + static_cast<long>(begin), tokens.begin() + static_cast<long>(end));
        if (!special) {
            std::string text;
            for (const llama_token t : run) {
                text += lg::token_text(vocab, t);
            }
            if (const std::optional<std::string> read = reading(text)) {
                changed = true;
                run = lg::tokenize(vocab, *read, /*add_special=*/false, /*parse_special=*/false);
            }
        }
        out.push_back({std::move(run), special ? -1 : 0});
    }
    if (!changed) {
        out.clear();
    }
    return out;
}

// Folded where folding changes the text: then the chat's own cache no longer holds what the guard reads.
std::optional<std::string> folded(const std::string & text) {
    std::string out = fold_valid(text);
    return out == text ? std::nullopt : std::optional<std::string>(std::move(out));
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
    const std::vector<lg::token_template::segment> first = reread(model.vocab, history, folded);
    if (first.empty()) {
        classify_in_place(guard, logits);
    } else {
        guard.classify_segments(first, "the chat's context, folded,", logits);
    }
    // Scored beside the first reading and the max kept, as lg_guard_classify does with a text: every run folded,
    // those with something to decode decoded
    bool decodes = false;
    const std::vector<lg::token_template::segment> second =
        reread(model.vocab, history, [&decodes](const std::string & text) {
            std::optional<std::string> read = lg::decoded_reading(fold_valid(text));
            decodes = decodes || read.has_value();
            return read ? read : folded(text);
        });
    if (decodes) {
        std::vector<float> decoded(guard.spec.labels.size());
        guard.classify_segments(second, "the chat's context, decoded,", decoded.data());
        for (size_t l = 0; l < decoded.size(); ++l) {
            logits[l] = std::max(logits[l], decoded[l]);
        }
    }
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

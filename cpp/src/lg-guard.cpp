#include "lg-guard.h"

#include "lg-decode.h"
#include "lg-error.h"
#include "lg-fold.h"
#include "lg-lines.h"
#include "lg-text.h"
#include "lg-threads.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

namespace {

// llama.cpp's own default ubatch
constexpr uint32_t k_default_n_ubatch = 512;
// Past this a text is refused before tokenizing (llama.cpp allocates 4 bytes per input byte to tokenize it)
constexpr size_t k_default_max_text_bytes = size_t{4} << 20;

enum llama_pooling_type llama_pooling(lg::pooling p) {
    switch (p) {
        case lg::pooling::mean: return LLAMA_POOLING_TYPE_MEAN;
        case lg::pooling::cls: return LLAMA_POOLING_TYPE_CLS;
        case lg::pooling::last: return LLAMA_POOLING_TYPE_NONE;  // taken from the graph by capture_final_norm
    }
    return LLAMA_POOLING_TYPE_NONE;
}

}  // namespace

lg_guard::lg_guard(lg_model & model_, const std::string & path, const lg_guard_params & params_)
    : model(model_),
      spec(lg::read_guard_file(path, model_)),
      prompt_template(lg::guard_template(model_, spec.template_prompt, spec.parse_special)),
      pair_template(lg::guard_template(model_, spec.template_pair, spec.parse_special)),
      params(params_) {
    if (params.n_seq_max == 0 || params.n_seq_max > llama_max_parallel_sequences()) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "n_seq_max must be between 1 and " +
                                              std::to_string(llama_max_parallel_sequences()) + ", got " +
                                              std::to_string(params.n_seq_max));
    }
    n_ctx = params.n_ctx == 0 ? 512 : params.n_ctx;
    if (model.n_ctx_train > 0) {
        n_ctx = std::min(n_ctx, static_cast<uint32_t>(model.n_ctx_train));
    }
    if (n_ctx < 8) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "n_ctx " + std::to_string(n_ctx) + " is too small for a guard (at least 8)");
    }

    if (params.max_text_bytes == 0) {
        params.max_text_bytes = k_default_max_text_bytes;
    }

    adapter = llama_adapter_lora_init(model.model, path.c_str());
    if (!adapter) {
        lg::fail(LG_ERR_FORMAT, "llama.cpp could not load the LoRA tensors of guard " + path +
                                    " (truncated or corrupt tensor data)");
    }
    // An aLoRA guard that only judges chats in place never needs a context of its own: made on first classify.
    if (!is_alora()) {
        try {
            make_context();
        } catch (...) {
            llama_adapter_lora_free(adapter);
            throw;
        }
    }
    model.retain();
}

void lg_guard::make_context() {
    const int n_threads = params.n_threads > 0 ? lg::resolve_n_threads(params.n_threads) : model.n_threads_budget();
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_ctx;
    cparams.n_batch = n_ctx;
    // Encoders attend both ways, so a sequence must fit one ubatch. Decoders may split a decode into several
    // ubatches: with a unified KV cache llama.cpp splits in order, so the captured rows stay in batch order.
    const uint32_t n_ubatch = params.n_ubatch == 0 ? k_default_n_ubatch : params.n_ubatch;
    cparams.n_ubatch = spec.pool == lg::pooling::last ? std::min(n_ubatch, n_ctx) : n_ctx;
    // More sequences than tokens cannot share a decode, and llama.cpp asserts (aborts) on that configuration.
    cparams.n_seq_max = std::min(params.n_seq_max, n_ctx);
    cparams.kv_unified = true;  // one stream: llama.cpp then splits batches in order (split_simple)
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.no_perf = true;
    if (params.f32_kv_cache) {
        cparams.type_k = GGML_TYPE_F32;
        cparams.type_v = GGML_TYPE_F32;
    }
    if (params.flash_attn >= 0) {
        cparams.flash_attn_type = params.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    if (spec.pool == lg::pooling::last) {
        capture.n_embd = model.n_embd;
        cparams.cb_eval = lg::capture_final_norm;
        cparams.cb_eval_user_data = &capture;
    } else {
        cparams.embeddings = true;
        cparams.pooling_type = llama_pooling(spec.pool);
    }
    ctx = llama_init_from_model(model.model, cparams);
    if (!ctx) {
        lg::fail(LG_ERR_BACKEND, "llama.cpp could not create the guard context (n_ctx " + std::to_string(n_ctx) +
                                     "): out of memory? try a smaller n_ctx");
    }
    // A plain guard's context only ever runs with its adapter: set once, no per-call switching cost. An aLoRA
    // guard switches it per decode (prefix without, invocation with).
    if (!is_alora() && llama_set_adapters_lora(ctx, &adapter, 1, std::array<float, 1>{1.0f}.data()) != 0) {
        llama_free(ctx);
        ctx = nullptr;
        lg::fail(LG_ERR_BACKEND, "llama.cpp could not attach the guard adapter to its context");
    }
    batch = llama_batch_init(static_cast<int32_t>(n_ctx), 0, 1);
}

lg_guard::~lg_guard() {
    if (ctx) {
        llama_batch_free(batch);
    }
    if (ctx) {
        llama_free(ctx);
    }
    if (adapter) {
        llama_adapter_lora_free(adapter);
    }
    model.release();  // after the adapter: llama.cpp's model keeps a list of its adapters
}

void lg_guard::check_size(std::string_view text, const char * field, const char * what) const {
    if (text.size() > params.max_text_bytes) {
        lg::fail(LG_ERR_TOO_LONG, std::string(field) + " is " + std::to_string(text.size()) + " bytes" + what +
                                      ", past the guard's limit of " + std::to_string(params.max_text_bytes) +
                                      " (max_text_bytes): split it, or raise the limit");
    }
}

lg_guard::read_text lg_guard::read(const lg_input & input) const {
    if (!input.prompt) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "prompt is NULL");
    }
    // Checked as given, then as folded: a few compatibility characters unfold into many bytes (U+FDFA into 33)
    const auto take = [&](std::string_view text, const char * field) {
        if (params.text_form == LG_TEXT_EXACT) {
            return std::string(text);
        }
        std::string folded = lg::fold_text(text);
        check_size(folded, field, " once folded");
        return folded;
    };
    const std::string_view prompt(input.prompt, input.prompt_len);
    check_size(prompt, "prompt", "");
    lg::check_text(prompt, "prompt");
    read_text text{take(prompt, "prompt"), std::nullopt};
    if (input.response) {
        // An empty reply is a real reply (a chat model can end its turn at once; DiaSafety labels such pairs) and
        // what training reads: the pair template with nothing in the response slot.
        const std::string_view response(input.response, input.response_len);
        check_size(response, "response", "");
        lg::check_encoding(response, "response");
        text.response = take(response, "response");
    }
    return text;
}

std::vector<llama_token> lg_guard::tokenize(const lg_input & input) const { return tokenize(read(input)); }

std::vector<llama_token> lg_guard::tokenize(const read_text & text) const {
    std::vector<llama_token> tokens =
        text.response ? pair_template.tokenize({text.prompt, *text.response}) : prompt_template.tokenize({text.prompt});
    // Appended as ids: tokenizing the invocation together with the text could merge tokens across the seam.
    tokens.insert(tokens.end(), spec.invocation.begin(), spec.invocation.end());
    return tokens;
}

std::vector<std::vector<llama_token>> lg_guard::sequences(const lg_input & input) const { return fit(input, 0); }

std::vector<lg_guard::job> lg_guard::make_jobs(const lg_input * inputs, size_t n) const {
    std::vector<job> jobs;
    for (size_t i = 0; i < n; ++i) {
        for (std::vector<llama_token> & tokens : fit(inputs[i], i)) {
            jobs.push_back({i, std::move(tokens)});
        }
    }
    return jobs;
}

std::optional<lg_guard::read_text> lg_guard::decoded_reading(const read_text & text) const {
    if (params.text_form != LG_TEXT_FOLDED) {
        return std::nullopt;
    }
    std::optional<std::string> prompt = lg::decoded_reading(text.prompt);
    std::optional<std::string> response = text.response ? lg::decoded_reading(*text.response) : std::nullopt;
    if (!prompt && !response) {
        return std::nullopt;
    }
    // Folding the decoded text can lengthen it (U+FDFA folds into 33 bytes): held to the limit as folded text is
    if (prompt) {
        check_size(*prompt, "prompt", " once decoded");
    }
    if (response) {
        check_size(*response, "response", " once decoded");
    }
    return read_text{prompt ? std::move(*prompt) : text.prompt, response ? std::move(response) : text.response};
}

std::vector<std::vector<llama_token>> lg_guard::fit(const lg_input & input, size_t input_index) const {
    const read_text text = read(input);
    std::vector<std::vector<llama_token>> out;
    // Every reading scored beside the text as written, the max kept as for windows: a request in leetspeak or base64
    // is read as the words it spells, and a text whose digits are digits keeps the score it has as written.
    const auto read_both = [&](const read_text & reading, const std::string & what) {
        for (std::vector<llama_token> & tokens : fit(reading, what)) {
            out.push_back(std::move(tokens));
        }
        if (const std::optional<read_text> decoded = decoded_reading(reading)) {
            for (std::vector<llama_token> & tokens : fit(*decoded, what + " decoded")) {
                out.push_back(std::move(tokens));
            }
        }
    };
    const std::string what = "input " + std::to_string(input_index);
    read_both(text, what);
    // A text judged alone is read line by line too: a request pasted among benign paragraphs is averaged into them
    // in one window (a mean or a last token over hundreds of benign tokens), but read alone it is what it is. A
    // reply is judged in its prompt's context, so a pair is read whole.
    if (!text.response && params.text_form == LG_TEXT_FOLDED && params.read_lines) {
        const std::vector<std::string> lines = lg::text_lines(text.prompt);
        for (size_t k = 0; k < lines.size(); ++k) {
            read_both(read_text{lines[k], std::nullopt}, what + " line " + std::to_string(k + 1));
        }
    }
    return out;
}

std::vector<std::vector<llama_token>> lg_guard::fit(const read_text & text, const std::string & what) const {
    std::vector<llama_token> whole = tokenize(text);
    if (whole.size() <= n_ctx) {
        return {std::move(whole)};
    }
    // Cut inside the prompt and response only: every window keeps the whole template (its framing, turn markers
    // and reply opening), which the guard was trained to read around the text.
    return cut(text.response ? pair_template.segments({text.prompt, *text.response})
                             : prompt_template.segments({text.prompt}),
               whole.size(), what);
}

std::vector<std::vector<llama_token>> lg_guard::cut(const std::vector<lg::token_template::segment> & segments,
                                                    size_t n_whole, const std::string & what) const {
    if (params.overflow == LG_OVERFLOW_ERROR) {
        lg::fail(LG_ERR_TOO_LONG, what + " is " + std::to_string(n_whole) + " tokens, the guard context holds " +
                                      std::to_string(n_ctx) +
                                      ": raise n_ctx or choose the keep-end or windows overflow policy");
    }
    std::vector<std::vector<llama_token>> out;
    size_t fixed = spec.invocation.size();  // the invocation is always kept whole, at the end
    size_t content = 0;
    for (const auto & seg : segments) {
        (seg.slot < 0 ? fixed : content) += seg.tokens.size();
    }
    if (fixed >= n_ctx) {
        lg::fail(LG_ERR_TOO_LONG, "the guard's template alone is " + std::to_string(fixed) +
                                      " tokens, the guard context holds " + std::to_string(n_ctx) + ": raise n_ctx");
    }
    const size_t width = std::min(n_ctx - fixed, content);
    // The template's tokens with content tokens [begin, begin + width) of the values, in place.
    const auto window = [&](size_t begin) {
        std::vector<llama_token> w;
        size_t at = 0;  // content tokens passed so far
        for (const auto & seg : segments) {
            if (seg.slot < 0) {
                w.insert(w.end(), seg.tokens.begin(), seg.tokens.end());
                continue;
            }
            const size_t lo = std::clamp(begin, at, at + seg.tokens.size()) - at;
            const size_t hi = std::clamp(begin + width, at, at + seg.tokens.size()) - at;
            w.insert(w.end(), seg.tokens.begin() + static_cast<long>(lo), seg.tokens.begin() + static_cast<long>(hi));
            at += seg.tokens.size();
        }
        w.insert(w.end(), spec.invocation.begin(), spec.invocation.end());
        return w;
    };
    if (params.overflow == LG_OVERFLOW_KEEP_END) {
        out.push_back(window(content - width));
        return out;
    }
    const size_t stride = std::max<size_t>(1, width / 2);
    for (size_t start = 0;; start += stride) {
        const size_t s = std::min(start, content - width);
        out.push_back(window(s));
        if (s == content - width) {
            break;
        }
    }
    return out;
}

void lg_guard::run_decode(const std::vector<job> & jobs, size_t begin, size_t end, std::vector<float> & states) {
    const bool last_token = spec.pool == lg::pooling::last;
    // An aLoRA guard decodes every prefix without the adapter first (no outputs), then the invocations with it.
    const size_t n_tail = spec.invocation.size();
    batch.n_tokens = 0;
    for (size_t j = begin; j < end; ++j) {
        const auto & tokens = jobs[j].tokens;
        const auto seq = static_cast<llama_seq_id>(j - begin);
        for (size_t p = 0; p + n_tail < tokens.size(); ++p) {
            const int32_t k = batch.n_tokens++;
            batch.token[k] = tokens[p];
            batch.pos[k] = static_cast<llama_pos>(p);
            batch.n_seq_id[k] = 1;
            batch.seq_id[k][0] = seq;
            batch.logits[k] = !is_alora() && (!last_token || p + 1 == tokens.size());
        }
    }
    llama_memory_clear(llama_get_memory(ctx), true);
    capture.reset();
    if (is_alora()) {
        set_adapter(ctx, false);
        capture.active = false;  // no outputs: nothing to read, and the prefix's last layer runs to the end
    }
    const int32_t rc = batch.n_tokens > 0 ? llama_decode(ctx, batch) : 0;
    capture.active = true;
    if (rc != 0) {
        lg::fail(LG_ERR_BACKEND, "llama.cpp guard decode failed (" + std::to_string(rc) + ")");
    }
    const size_t n_embd = static_cast<size_t>(model.n_embd);
    if (is_alora()) {
        std::vector<llama_pos> starts;
        for (size_t j = begin; j < end; ++j) {
            starts.push_back(static_cast<llama_pos>(jobs[j].tokens.size() - n_tail));
        }
        invoke(ctx, batch, starts, capture);
    }
    if (last_token) {
        lg::check_captured(capture, end - begin, model.architecture);
        states.insert(states.end(), capture.rows.begin(), capture.rows.end());
        return;
    }
    for (size_t j = begin; j < end; ++j) {
        const float * pooled = llama_get_embeddings_seq(ctx, static_cast<llama_seq_id>(j - begin));
        if (!pooled) {
            lg::fail(LG_ERR_BACKEND, "llama.cpp returned no pooled embedding for the guard");
        }
        states.insert(states.end(), pooled, pooled + n_embd);
    }
}

void lg_guard::classify(const lg_input * inputs, size_t n, float * logits) { score(make_jobs(inputs, n), n, logits); }

void lg_guard::classify_segments(const std::vector<lg::token_template::segment> & segments, const std::string & what,
                                 float * logits) {
    std::vector<llama_token> whole;
    for (const auto & seg : segments) {
        whole.insert(whole.end(), seg.tokens.begin(), seg.tokens.end());
    }
    whole.insert(whole.end(), spec.invocation.begin(), spec.invocation.end());
    std::vector<job> jobs;
    if (whole.size() <= n_ctx) {
        jobs.push_back({0, std::move(whole)});
    } else {
        for (std::vector<llama_token> & tokens : cut(segments, whole.size(), what)) {
            jobs.push_back({0, std::move(tokens)});
        }
    }
    score(jobs, 1, logits);
}

void lg_guard::score(const std::vector<job> & jobs, size_t n, float * logits) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!ctx) {
        make_context();
    }
    const lg::thread_share threads(model, ctx, params.n_threads);
    std::vector<float> states;
    states.reserve(jobs.size() * static_cast<size_t>(model.n_embd));
    size_t begin = 0;
    while (begin < jobs.size()) {
        size_t end = begin;
        size_t n_tokens = 0;
        const size_t max_seqs = params.isolated ? 1 : params.n_seq_max;
        while (end < jobs.size() && end - begin < max_seqs && n_tokens + jobs[end].tokens.size() <= n_ctx) {
            n_tokens += jobs[end].tokens.size();
            ++end;
        }
        run_decode(jobs, begin, end, states);
        begin = end;
    }

    const size_t n_labels = spec.labels.size();
    const size_t n_embd = static_cast<size_t>(model.n_embd);
    std::fill(logits, logits + n * n_labels, -std::numeric_limits<float>::infinity());
    std::vector<float> row(n_labels);
    for (size_t j = 0; j < jobs.size(); ++j) {
        head(states.data() + j * n_embd, row.data(), jobs[j].input);
        float * out = logits + jobs[j].input * n_labels;
        for (size_t l = 0; l < n_labels; ++l) {
            out[l] = std::max(out[l], row[l]);  // windows: the max logit per label
        }
    }
}

void lg_guard::head(const float * state, float * logits, size_t input_index) const {
    const size_t n_embd = static_cast<size_t>(model.n_embd);
    for (size_t l = 0; l < spec.labels.size(); ++l) {
        const float * w = spec.head_weight.data() + l * n_embd;
        double acc = spec.head_bias[l];
        for (size_t k = 0; k < n_embd; ++k) {
            acc += static_cast<double>(w[k]) * state[k];
        }
        if (!std::isfinite(acc)) {
            // A silent -inf would never flag: a scale or weights that overflow are a broken guard, not a verdict.
            lg::fail(LG_ERR_BACKEND, "the guard computed a non-finite score for input " + std::to_string(input_index) +
                                         " (its LoRA scale or weights overflow): the guard file is unusable");
        }
        logits[l] = static_cast<float>(acc);
    }
}

void lg_guard::verdicts(const float * logits, size_t n, float * probs, uint8_t * flagged) const {
    const size_t n_labels = spec.labels.size();
    for (size_t i = 0; i < n * n_labels; ++i) {
        const float p = 1.0f / (1.0f + std::exp(-logits[i]));
        if (probs) {
            probs[i] = p;
        }
        if (flagged) {
            flagged[i] = p >= spec.thresholds[i % n_labels];
        }
    }
}

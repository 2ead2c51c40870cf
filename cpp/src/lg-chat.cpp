#include "lg-chat.h"

#include "lg-error.h"
#include "lg-guard.h"
#include "lg-template.h"
#include "lg-text.h"
#include "lg-threads.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>

namespace {

struct sampler_deleter {
    void operator()(llama_sampler * s) const { llama_sampler_free(s); }
};
using sampler_ptr = std::unique_ptr<llama_sampler, sampler_deleter>;

sampler_ptr make_sampler(const lg_generate_params & p) {
    sampler_ptr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (p.temperature <= 0.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
        return chain;
    }
    if (p.top_k > 0) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(p.top_k));
    }
    if (p.top_p < 1.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(p.top_p, 1));
    }
    llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(p.temperature));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(p.seed));
    return chain;
}

constexpr const char * k_roles[] = {"system", "user", "assistant", "tool"};

// Stands in for message i's content while the template is rendered, to find where each content goes.
std::string slot_marker(size_t i) { return "\x1blg-message-" + std::to_string(i) + "\x1b"; }

std::string_view trim_space(std::string_view s, bool front, bool back) {
    while (front && !s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) {
        s.remove_prefix(1);
    }
    while (back && !s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
        s.remove_suffix(1);
    }
    return s;
}

// The longest suffix of text that is a proper prefix of one of the stop strings: text that may yet become a stop.
size_t stop_prefix_at_end(const std::string & text, const std::vector<std::string> & stops) {
    size_t longest = 0;
    for (const std::string & stop : stops) {
        for (size_t k = std::min(stop.size() - 1, text.size()); k > longest; --k) {
            if (text.compare(text.size() - k, k, stop, 0, k) == 0) {
                longest = k;
                break;
            }
        }
    }
    return longest;
}

}  // namespace

lg_chat::lg_chat(lg_model & model_, const lg_chat_params & params_) : model(model_), params(params_) {
    if (model.is_encoder) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "model " + model.name + " is an encoder (" + model.architecture +
                                              "): it has no chat path, only the guard path");
    }
    n_ctx = params.n_ctx == 0 ? 2048 : params.n_ctx;
    if (model.n_ctx_train > 0) {
        n_ctx = std::min(n_ctx, static_cast<uint32_t>(model.n_ctx_train));
    }
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_ctx;
    if (params.n_batch > 0) {
        cparams.n_batch = params.n_batch;
    }
    if (params.n_ubatch > 0) {
        cparams.n_ubatch = params.n_ubatch;
    }
    const int n_threads = params.n_threads > 0 ? lg::resolve_n_threads(params.n_threads) : model.n_threads_budget();
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.no_perf = true;
    if (params.flash_attn >= 0) {
        cparams.flash_attn_type = params.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    if (params.f32_kv_cache) {
        cparams.type_k = GGML_TYPE_F32;
        cparams.type_v = GGML_TYPE_F32;
    }
    // llama.cpp's default, relied on by guard calls: with a full-size sliding-window cache the invocation takes
    // empty cells after the chat's, never a cell the chat's next token still attends to.
    cparams.swa_full = true;
    // Inactive between guard calls: it then asks for no tensor and the chat's graph runs as without a callback.
    capture.n_embd = model.n_embd;
    capture.active = false;
    cparams.cb_eval = lg::capture_final_norm;
    cparams.cb_eval_user_data = &capture;
    ctx = llama_init_from_model(model.model, cparams);
    if (!ctx) {
        lg::fail(LG_ERR_BACKEND, "llama.cpp could not create the chat context (n_ctx " + std::to_string(n_ctx) +
                                     "): out of memory? try a smaller n_ctx");
    }
    model.retain();
}

lg_chat::~lg_chat() {
    if (ctx) {
        llama_free(ctx);
    }
    model.release();
}

std::string lg_chat::render(const lg_message * messages, const std::vector<std::string> & values) const {
    const size_t n = values.size();
    const char * tmpl = llama_model_chat_template(model.model, nullptr);
    if (!tmpl) {
        std::string joined;
        for (size_t i = 0; i < n; ++i) {
            joined += (i ? "\n" : "") + values[i];
        }
        return joined;
    }
    std::vector<std::string> roles(n);
    std::vector<llama_chat_message> msgs(n);
    for (size_t i = 0; i < n; ++i) {
        roles[i].assign(messages[i].role, messages[i].role_len);
        msgs[i] = {roles[i].c_str(), values[i].c_str()};
    }
    std::vector<char> buf(4096);
    int32_t len = llama_chat_apply_template(tmpl, msgs.data(), n, true, buf.data(), static_cast<int32_t>(buf.size()));
    if (len > static_cast<int32_t>(buf.size())) {
        buf.resize(static_cast<size_t>(len));
        len = llama_chat_apply_template(tmpl, msgs.data(), n, true, buf.data(), static_cast<int32_t>(buf.size()));
    }
    if (len < 0) {
        lg::fail(LG_ERR_FORMAT, "llama.cpp does not support the chat template of model " + model.name +
                                    ": format the prompt yourself and use generate");
    }
    return std::string(buf.data(), static_cast<size_t>(len));
}

namespace {

// The messages' contents, checked: known roles, text that is valid UTF-8 without NUL bytes.
std::vector<std::string> checked_contents(const lg_message * messages, size_t n, size_t max_bytes) {
    std::vector<std::string> contents(n);
    size_t total = 0;
    for (size_t i = 0; i < n; ++i) {
        const lg_message & m = messages[i];
        if (!m.role || !m.content) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "message " + std::to_string(i) + " has a NULL role or content");
        }
        const std::string_view role(m.role, m.role_len);
        if (std::none_of(std::begin(k_roles), std::end(k_roles), [&](const char * r) { return role == r; })) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "message " + std::to_string(i) + " has role '" + std::string(role) +
                                                  "': use system, user, assistant or tool");
        }
        const std::string_view content(m.content, m.content_len);
        lg::check_text(content, "message content");
        total += content.size();
        if (total > max_bytes) {
            lg::fail(LG_ERR_TOO_LONG, "messages are " + std::to_string(total) +
                                          "+ bytes, more than the chat context can hold: shorten the conversation");
        }
        contents[i].assign(content);
    }
    return contents;
}

}  // namespace

std::string lg_chat::format(const lg_message * messages, size_t n) const {
    return render(messages, checked_contents(messages, n, n_ctx * model.max_token_bytes));
}

std::vector<llama_token> lg_chat::tokenize(const lg_message * messages, size_t n) const {
    const std::vector<std::string> contents = checked_contents(messages, n, n_ctx * model.max_token_bytes);
    const auto template_error = [&](const std::string & what) {
        lg::fail(LG_ERR_FORMAT, "the chat template of model " + model.name + " " + what +
                                    ": loraguard cannot tell its markers from message text, so it will not run it");
    };

    // Where the template puts each content, and the template's own text around them.
    std::vector<std::string> markers(n);
    for (size_t i = 0; i < n; ++i) {
        markers[i] = slot_marker(i);
    }
    const std::string marked = render(messages, markers);
    std::vector<lg::token_template::piece> pieces;
    size_t pos = 0;
    for (size_t i = 0; i < n; ++i) {
        const size_t at = marked.find(markers[i], pos);
        if (at == std::string::npos) {
            template_error("drops or reorders message " + std::to_string(i));
        }
        pieces.push_back({marked.substr(pos, at - pos)});
        pieces.push_back({std::string(), static_cast<int>(i)});
        pos = at + markers[i].size();
    }
    pieces.push_back({marked.substr(pos)});
    for (const auto & p : pieces) {
        if (p.text.find("\x1blg-message-") != std::string::npos) {
            template_error("repeats a message");
        }
    }

    // What the template does to each content (some trim it), read off the real rendering.
    const std::string rendered = render(messages, contents);
    std::vector<std::string_view> values(n);
    size_t at = 0;
    for (size_t k = 0; k < pieces.size(); ++k) {
        const auto & p = pieces[k];
        if (p.slot < 0) {
            if (rendered.compare(at, p.text.size(), p.text) != 0) {
                template_error("changes with the message text");
            }
            at += p.text.size();
            continue;
        }
        const std::string & next = pieces[k + 1].text;  // the trailing literal always follows the last slot
        const std::string_view content = contents[static_cast<size_t>(p.slot)];
        bool placed = false;
        for (const std::string_view candidate :
             {content, trim_space(content, true, true), trim_space(content, false, true), trim_space(content, true, false)}) {
            if (rendered.compare(at, candidate.size(), candidate) == 0 &&
                rendered.compare(at + candidate.size(), next.size(), next) == 0) {
                values[static_cast<size_t>(p.slot)] = candidate;
                at += candidate.size();
                placed = true;
                break;
            }
        }
        if (!placed) {
            template_error("changes message " + std::to_string(p.slot) + " beyond trimming it");
        }
    }
    if (at != rendered.size()) {
        template_error("changes with the message text");
    }
    return lg::token_template(model, std::move(pieces), /*parse_special=*/true).tokenize(values);
}

std::vector<llama_token> lg_chat::tokenize_raw(std::string_view prompt) const {
    lg::check_text(prompt, "prompt");
    if (prompt.size() > n_ctx * model.max_token_bytes) {
        lg::fail(LG_ERR_TOO_LONG, "prompt of " + std::to_string(prompt.size()) +
                                      " bytes is more than the chat context can hold: shorten it or raise n_ctx");
    }
    return lg::tokenize(model.vocab, std::string(prompt), /*add_special=*/true, /*parse_special=*/true);
}

void lg_chat::decode(const llama_token * tokens, size_t n, bool clear) {
    if (clear) {
        llama_memory_clear(llama_get_memory(ctx), true);
        n_past = 0;
        history.clear();
    }
    if (n == 0) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "no tokens to decode");
    }
    const llama_token n_vocab = llama_vocab_n_tokens(model.vocab);
    for (size_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "token id " + std::to_string(tokens[i]) + " is outside the vocabulary (" +
                                                  std::to_string(n_vocab) + " tokens)");
        }
    }
    if (n_past + n > n_ctx) {
        lg::fail(LG_ERR_TOO_LONG, "chat context is full: " + std::to_string(n_past) + " + " + std::to_string(n) +
                                      " tokens > n_ctx " + std::to_string(n_ctx) + ": raise n_ctx or shorten the prompt");
    }
    const lg::thread_share threads(model, ctx, params.n_threads);
    const size_t n_batch = llama_n_batch(ctx);
    llama_batch batch = llama_batch_init(static_cast<int32_t>(std::min(n, n_batch)), 0, 1);
    for (size_t start = 0; start < n; start += n_batch) {
        const size_t count = std::min(n_batch, n - start);
        batch.n_tokens = static_cast<int32_t>(count);
        for (size_t k = 0; k < count; ++k) {
            batch.token[k] = tokens[start + k];
            batch.pos[k] = static_cast<llama_pos>(n_past + k);
            batch.n_seq_id[k] = 1;
            batch.seq_id[k][0] = 0;
            batch.logits[k] = k + 1 == count;
        }
        const int32_t rc = llama_decode(ctx, batch);
        if (rc != 0) {
            llama_batch_free(batch);
            lg::fail(LG_ERR_BACKEND, "llama.cpp chat decode failed (" + std::to_string(rc) + ")");
        }
        n_past += count;
        history.insert(history.end(), tokens + start, tokens + start + count);
    }
    llama_batch_free(batch);
}

const float * lg_chat::last_logits() const { return llama_get_logits_ith(ctx, -1); }

std::unique_lock<std::mutex> lg_chat::enter(bool allowed_in_callback, const char * what) {
    if (generating_thread.load() == std::this_thread::get_id()) {
        if (!allowed_in_callback) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, std::string(what) + " was called from a callback of this chat's own "
                                                  "generation, which it would change under it: call it after "
                                                  "the generation returns");
        }
        return {};
    }
    return std::unique_lock<std::mutex>(mutex);
}

lg_chat::generation lg_chat::generate(const std::vector<llama_token> & prompt, const lg_generate_params & p,
                                      const lg_message * messages, size_t n_messages) {
    // A NaN passes the samplers' "<= 0: greedy" and ">= 1: off" tests and would sample from NaN probabilities.
    if (!std::isfinite(p.temperature) || !std::isfinite(p.top_p)) {
        lg::fail(LG_ERR_INVALID_ARGUMENT, "temperature and top_p must be finite numbers, got " +
                                              std::to_string(p.temperature) + " and " + std::to_string(p.top_p));
    }
    std::vector<std::string> stops;
    for (size_t i = 0; i < p.n_stop; ++i) {
        if (!p.stop[i] || !p.stop[i][0]) {
            lg::fail(LG_ERR_INVALID_ARGUMENT, "stop string " + std::to_string(i) + " is NULL or empty");
        }
        stops.emplace_back(p.stop[i]);
    }
    lg_guard * guard = p.guard;
    // Room the guard's invocation needs after the last token, so that the final verdict always fits.
    const size_t reserve = guard ? guard->spec.invocation.size() : 0;
    if (guard) {
        check_guard(*guard);
        if (prompt.size() + reserve > n_ctx) {
            lg::fail(LG_ERR_TOO_LONG, "prompt of " + std::to_string(prompt.size()) + " tokens leaves no room for the "
                                          "guard's invocation (" + std::to_string(reserve) + " tokens) in n_ctx " +
                                          std::to_string(n_ctx) + ": raise n_ctx or shorten the prompt");
        }
    }
    struct generating_scope {
        std::atomic<std::thread::id> & id;
        explicit generating_scope(std::atomic<std::thread::id> & i) : id(i) { id = std::this_thread::get_id(); }
        ~generating_scope() { id = std::thread::id(); }
    } scope(generating_thread);
    cancel_requested = false;
    // Read before the prompt's prefill, which cannot be undone: a line that fails to read leaves the chat as it was
    const std::vector<float> user_lines = guard ? read_user_lines(*guard, messages, n_messages) : std::vector<float>{};
    decode(prompt.data(), prompt.size(), /*clear=*/true);
    const size_t n_prompt = n_past;

    generation result;
    size_t n_judged = 0;  // n_past at the last verdict
    std::vector<float> verdict_logits(guard ? guard->spec.labels.size() : 0);
    std::vector<float> verdict_probs(verdict_logits.size());
    std::vector<uint8_t> verdict_flags(verdict_logits.size());
    // Judges the context; false when generation must stop (flagged, or on_verdict said so).
    const auto judge = [&] {
        classify(*guard, verdict_logits.data());
        for (size_t l = 0; l < user_lines.size(); ++l) {
            verdict_logits[l] = std::max(verdict_logits[l], user_lines[l]);
        }
        guard->verdicts(verdict_logits.data(), 1, verdict_probs.data(), verdict_flags.data());
        n_judged = n_past;
        std::string labels;
        for (size_t l = 0; l < verdict_flags.size(); ++l) {
            if (verdict_flags[l]) {
                labels += (labels.empty() ? "" : ", ") + guard->spec.labels[l];
            }
        }
        const lg_verdict v{n_past, n_past - n_prompt, static_cast<int32_t>(verdict_logits.size()),
                           verdict_logits.data(), verdict_probs.data(), verdict_flags.data(), !labels.empty()};
        const bool go_on = !p.on_verdict || p.on_verdict(&v, p.user_data);
        if (!labels.empty()) {
            result.flagged = "the guard flagged the " +
                             (n_past == n_prompt ? std::string("prompt")
                                                 : "reply after " + std::to_string(n_past - n_prompt) + " tokens") +
                             " (" + labels + ")";
            return false;
        }
        return go_on;
    };
    if (guard && !judge()) {
        return result;
    }

    sampler_ptr sampler = make_sampler(p);
    std::string & out = result.text;
    size_t final_end = 0;  // out[0, final_end) has been handed to on_token and can no longer change
    llama_token last = LLAMA_TOKEN_NULL;
    // Hands out[final_end, end) to the callback; false when the callback asks to stop.
    const auto release = [&](size_t end) {
        if (end <= final_end) {
            return true;
        }
        const bool go_on = !p.on_token ||
                           p.on_token(last, out.data() + final_end, end - final_end, last_logits(), p.user_data);
        final_end = end;
        return go_on;
    };
    // A verdict that stops generation withholds the text not yet released.
    const auto stop_by_guard = [&] {
        out.resize(final_end);
        return result;
    };
    for (int32_t step = 0; p.max_tokens <= 0 || step < p.max_tokens; ++step) {
        if (cancel_requested) {
            lg::fail(LG_ERR_CANCELLED, "generation cancelled: the chat was closed or cancelled");
        }
        last = llama_sampler_sample(sampler.get(), ctx, -1);
        if (llama_vocab_is_eog(model.vocab, last)) {
            break;
        }
        const size_t before = out.size();
        out += lg::token_text(model.vocab, last);
        // A stop string can only begin in text not yet released: released text never ended in a stop's prefix.
        size_t stop_at = std::string::npos;
        for (const std::string & stop : stops) {
            stop_at = std::min(stop_at, out.find(stop, final_end));
        }
        if (stop_at != std::string::npos) {
            out.resize(stop_at);
        }
        const bool room = n_past + reserve < n_ctx;
        // Under a guard no reply text leaves unread by a verdict: a token there is no room to read before the
        // final verdict is not part of the reply, and one whose text before a stop string is kept is read.
        if (guard && !room) {
            out.resize(std::min(out.size(), before));
            break;
        }
        if (stop_at != std::string::npos) {
            if (guard && out.size() > before) {
                decode(&last, 1, /*clear=*/false);
            }
            break;
        }
        if (!release(out.size() - stop_prefix_at_end(out, stops))) {
            out.resize(final_end);
            break;
        }
        if (!room) {
            break;
        }
        decode(&last, 1, /*clear=*/false);
        if (guard && p.guard_every > 0 && (n_past - n_prompt) % static_cast<size_t>(p.guard_every) == 0 && !judge()) {
            return stop_by_guard();
        }
    }
    if (guard && n_past != n_judged && !judge()) {
        return stop_by_guard();
    }
    release(out.size());
    return result;
}

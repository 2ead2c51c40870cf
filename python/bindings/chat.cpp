#include "bindings.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <tuple>
#include <vector>

namespace lgpy {

namespace {

using chat_handle = handle<lg_chat, lg_chat_free>;

// State shared with the token callback, which runs with the GIL released around it.
struct stream_state {
    py::object on_token;
    int32_t n_vocab = 0;
    bool with_logits = false;
    std::exception_ptr error;
    py::object on_verdict;
};

template <typename T> py::array_t<T> array_of(const T * data, size_t n) {
    py::array_t<T> out(static_cast<py::ssize_t>(n));
    std::copy(data, data + n, out.mutable_data());
    return out;
}

// on_verdict(n_tokens, n_reply_tokens, logits, probs, flagged) -> keep going (None counts as True)
bool forward_verdict(const lg_verdict * v, void * user_data) {
    auto * st = static_cast<stream_state *>(user_data);
    py::gil_scoped_acquire acquire;
    try {
        const auto n = static_cast<size_t>(v->n_labels);
        py::array_t<bool> flagged(static_cast<py::ssize_t>(n));
        std::transform(v->flagged, v->flagged + n, flagged.mutable_data(), [](uint8_t f) { return f != 0; });
        py::object keep_going = st->on_verdict(v->n_tokens, v->n_reply_tokens, array_of(v->logits, n),
                                               array_of(v->probs, n), flagged);
        return keep_going.is_none() || keep_going.cast<bool>();
    } catch (...) {
        st->error = std::current_exception();
        return false;
    }
}

bool forward_token(int32_t token, const char * piece, size_t len, const float * logits, void * user_data) {
    auto * st = static_cast<stream_state *>(user_data);
    py::gil_scoped_acquire acquire;
    try {
        py::object logits_obj = py::none();
        if (st->with_logits) {
            py::array_t<float> copy(st->n_vocab);
            std::copy(logits, logits + st->n_vocab, copy.mutable_data());
            logits_obj = std::move(copy);
        }
        py::object keep_going = st->on_token(token, py::bytes(piece, len), logits_obj);
        return keep_going.is_none() || keep_going.cast<bool>();
    } catch (...) {
        st->error = std::current_exception();
        return false;
    }
}

class ChatPath {
  public:
    using messages_t = std::vector<std::pair<std::string, std::string>>;

    ChatPath(const Model & model, uint32_t n_ctx, uint32_t n_batch, uint32_t n_ubatch, int n_threads, int flash_attn,
             bool f32_kv_cache)
        : n_vocab_(lg_model_n_vocab(model.get().get())),
          handle_(create(model, n_ctx, n_batch, n_ubatch, n_threads, flash_attn, f32_kv_cache)) {}

    std::string format(const messages_t & messages) const {
        auto c = handle_.get("chat");
        const std::vector<lg_message> msgs = to_messages(messages);
        char * out = nullptr;
        check(lg_chat_format(c.get(), msgs.data(), msgs.size(), &out));
        std::string text(out);
        lg_string_free(out);
        return text;
    }

    std::vector<int32_t> tokenize(const messages_t & messages) const {
        auto c = handle_.get("chat");
        const std::vector<lg_message> msgs = to_messages(messages);
        size_t n = 0;
        check(lg_chat_tokenize(c.get(), msgs.data(), msgs.size(), nullptr, 0, &n));
        std::vector<int32_t> tokens(n);
        check(lg_chat_tokenize(c.get(), msgs.data(), msgs.size(), tokens.data(), tokens.size(), &n));
        return tokens;
    }

    // Trusted raw prompt text (special-token text parsed). on_token(token_id, piece_bytes, logits_or_None) ->
    // bool | None; returning False stops generation.
    py::bytes generate(const std::string & prompt, int max_tokens, float temperature, int top_k, float top_p,
                       uint32_t seed, const std::vector<std::string> & stop, const py::object & on_token,
                       bool with_logits, const py::object & guard, int guard_every,
                       const py::object & on_verdict) const {
        return run(max_tokens, temperature, top_k, top_p, seed, stop, on_token, with_logits, guard, guard_every,
                   on_verdict,
                   [&](lg_chat * c, const lg_generate_params & p, char ** out) {
                       return lg_chat_generate(c, prompt.data(), prompt.size(), &p, out);
                   });
    }

    // The assistant's reply to messages; their contents are always plain text.
    py::bytes generate_messages(const messages_t & messages, int max_tokens, float temperature, int top_k, float top_p,
                                uint32_t seed, const std::vector<std::string> & stop, const py::object & on_token,
                                bool with_logits, const py::object & guard, int guard_every,
                                const py::object & on_verdict) const {
        const std::vector<lg_message> msgs = to_messages(messages);
        return run(max_tokens, temperature, top_k, top_p, seed, stop, on_token, with_logits, guard, guard_every,
                   on_verdict,
                   [&](lg_chat * c, const lg_generate_params & p, char ** out) {
                       return lg_chat_generate_messages(c, msgs.data(), msgs.size(), &p, out);
                   });
    }

    py::array_t<float> decode(const std::vector<int32_t> & tokens, bool clear) const {
        auto c = handle_.get("chat");
        py::array_t<float> logits(n_vocab_);
        float * out = logits.mutable_data();
        {
            py::gil_scoped_release release;
            check(lg_chat_decode(c.get(), tokens.data(), tokens.size(), clear, out));
        }
        return logits;
    }

    // The chat's context so far judged in place by an aLoRA guard: (logits, probs, flagged), one per label.
    std::tuple<py::array_t<float>, py::array_t<float>, py::array_t<bool>> classify(const py::object & guard) const {
        auto c = handle_.get("chat");
        auto g = guard_of(guard);
        const auto n = static_cast<size_t>(lg_guard_n_labels(g.get()));
        std::vector<float> logits(n);
        std::vector<float> probs(n);
        std::vector<uint8_t> flagged(n);
        {
            py::gil_scoped_release release;
            check(lg_chat_classify(c.get(), g.get(), logits.data(), probs.data(), flagged.data()));
        }
        py::array_t<bool> flags(static_cast<py::ssize_t>(n));
        std::transform(flagged.begin(), flagged.end(), flags.mutable_data(), [](uint8_t f) { return f != 0; });
        return {array_of(logits.data(), n), array_of(probs.data(), n), flags};
    }

    // (tokens decoded, lowest position, highest position, bytes of the sequence's state)
    std::tuple<size_t, int32_t, int32_t, size_t> memory() const {
        auto c = handle_.get("chat");
        size_t n_tokens = 0;
        int32_t pos_min = -1;
        int32_t pos_max = -1;
        size_t state_bytes = 0;
        check(lg_chat_memory(c.get(), &n_tokens, &pos_min, &pos_max, &state_bytes));
        return {n_tokens, pos_min, pos_max, state_bytes};
    }

    // Stops a generation in flight (it raises "cancelled"); the chat stays open.
    void cancel() const {
        if (auto c = handle_.peek()) {
            lg_chat_cancel(c.get());
        }
    }

    // A generation in flight is cancelled; the context is freed when the last call on it returns.
    void close() {
        cancel();
        handle_.close();
    }
    bool closed() const { return handle_.closed(); }

  private:
    static std::vector<lg_message> to_messages(const messages_t & messages) {
        std::vector<lg_message> msgs;
        for (const auto & [role, content] : messages) {
            msgs.push_back(message_of(role, content));
        }
        return msgs;
    }

    template <typename Generate>
    py::bytes run(int max_tokens, float temperature, int top_k, float top_p, uint32_t seed,
                  const std::vector<std::string> & stop, const py::object & on_token, bool with_logits,
                  const py::object & guard, int guard_every, const py::object & on_verdict,
                  Generate && generate_fn) const {
        auto c = handle_.get("chat");
        std::shared_ptr<lg_guard> g = guard.is_none() ? nullptr : guard_of(guard);
        lg_generate_params p = lg_generate_default_params();
        p.max_tokens = max_tokens;
        p.temperature = temperature;
        p.top_k = top_k;
        p.top_p = top_p;
        p.seed = seed;
        std::vector<const char *> stop_ptrs;
        for (const auto & s : stop) {
            if (s.find('\0') != std::string::npos) {
                throw native_error(LG_ERR_INVALID_ARGUMENT, "a stop string contains a NUL byte");
            }
            stop_ptrs.push_back(s.c_str());
        }
        p.stop = stop_ptrs.data();
        p.n_stop = stop_ptrs.size();
        stream_state st{on_token, n_vocab_, with_logits, nullptr, on_verdict};
        p.user_data = &st;
        if (!on_token.is_none()) {
            p.on_token = forward_token;
        }
        p.guard = g.get();
        p.guard_every = guard_every;
        if (!on_verdict.is_none()) {
            p.on_verdict = forward_verdict;
        }
        char * out = nullptr;
        lg_status status;
        {
            py::gil_scoped_release release;
            status = generate_fn(c.get(), p, &out);
        }
        const py::bytes text(out ? out : "");
        lg_string_free(out);
        if (st.error) {
            std::rethrow_exception(st.error);
        }
        if (status == LG_FLAGGED) {
            // The text released before the flagged verdict travels with the error.
            py::object error = py::module_::import("loraguard_cpp.errors").attr("FlaggedError")(lg_last_error(), text);
            PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(error.ptr())), error.ptr());
            throw py::error_already_set();
        }
        check(status);
        return text;
    }

    static lg_chat * create(const Model & model, uint32_t n_ctx, uint32_t n_batch, uint32_t n_ubatch, int n_threads,
                            int flash_attn, bool f32_kv_cache) {
        if (flash_attn < LG_FLASH_ATTN_AUTO || flash_attn > LG_FLASH_ATTN_ON) {
            throw native_error(LG_ERR_INVALID_ARGUMENT, "flash_attn must be -1 (auto), 0 (off) or 1 (on)");
        }
        lg_chat_params p = lg_chat_default_params();
        p.n_ctx = n_ctx;
        if (n_batch > 0) {
            p.n_batch = n_batch;
        }
        if (n_ubatch > 0) {
            p.n_ubatch = n_ubatch;
        }
        p.n_threads = n_threads;
        p.flash_attn = static_cast<lg_flash_attn>(flash_attn);
        p.f32_kv_cache = f32_kv_cache;
        auto m = model.get();
        lg_chat * out = nullptr;
        py::gil_scoped_release release;
        check(lg_chat_create(m.get(), &p, &out));
        return out;
    }

    int32_t n_vocab_;
    chat_handle handle_;
};

}  // namespace

void register_chat(py::module_ & m) {
    py::class_<ChatPath>(m, "ChatPath")
        .def(py::init<const Model &, uint32_t, uint32_t, uint32_t, int, int, bool>(), py::arg("model"),
             py::arg("n_ctx") = 2048, py::arg("n_batch") = 0, py::arg("n_ubatch") = 0, py::arg("n_threads") = 0,
             py::arg("flash_attn") = -1, py::arg("f32_kv_cache") = false)
        .def("format", &ChatPath::format, py::arg("messages"))
        .def("tokenize", &ChatPath::tokenize, py::arg("messages"))
        .def("generate", &ChatPath::generate, py::arg("prompt"), py::arg("max_tokens") = 256,
             py::arg("temperature") = 0.0f, py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("seed") = 0,
             py::arg("stop") = std::vector<std::string>{}, py::arg("on_token") = py::none(),
             py::arg("with_logits") = false, py::arg("guard") = py::none(), py::arg("guard_every") = 16,
             py::arg("on_verdict") = py::none())
        .def("generate_messages", &ChatPath::generate_messages, py::arg("messages"), py::arg("max_tokens") = 256,
             py::arg("temperature") = 0.0f, py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("seed") = 0,
             py::arg("stop") = std::vector<std::string>{}, py::arg("on_token") = py::none(),
             py::arg("with_logits") = false, py::arg("guard") = py::none(), py::arg("guard_every") = 16,
             py::arg("on_verdict") = py::none())
        .def("decode", &ChatPath::decode, py::arg("tokens"), py::arg("clear") = true)
        .def("classify", &ChatPath::classify, py::arg("guard"))
        .def("memory", &ChatPath::memory)
        .def("cancel", &ChatPath::cancel)
        .def_property_readonly("closed", &ChatPath::closed)
        .def("close", &ChatPath::close);
}

}  // namespace lgpy

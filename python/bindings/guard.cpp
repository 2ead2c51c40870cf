#include "bindings.h"

#include <optional>
#include <tuple>
#include <vector>

namespace lgpy {

namespace {

using guard_handle = handle<lg_guard, lg_guard_free>;

class GuardPath {
  public:
    GuardPath(const Model & model, const std::string & path, uint32_t n_ctx, uint32_t n_seq_max, int n_threads,
              int overflow, bool isolated, bool f32_kv_cache, int flash_attn, uint32_t n_ubatch, size_t max_text_bytes,
              int text_form, bool read_lines)
        : handle_(load(model, path, n_ctx, n_seq_max, n_threads, overflow, isolated, f32_kv_cache, flash_attn, n_ubatch,
                       max_text_bytes, text_form, read_lines)) {}

    std::vector<std::string> labels() const {
        auto g = handle_.get("guard");
        std::vector<std::string> out;
        for (int32_t i = 0; i < lg_guard_n_labels(g.get()); ++i) {
            out.emplace_back(lg_guard_label(g.get(), i));
        }
        return out;
    }

    std::vector<float> thresholds() const {
        auto g = handle_.get("guard");
        std::vector<float> out;
        for (int32_t i = 0; i < lg_guard_n_labels(g.get()); ++i) {
            out.push_back(lg_guard_threshold(g.get(), i));
        }
        return out;
    }

    std::optional<std::string> meta(const std::string & key) const {
        const char * v = lg_guard_meta(handle_.get("guard").get(), key.c_str());
        return v ? std::optional<std::string>(v) : std::nullopt;
    }

    using responses_t = std::optional<std::vector<std::optional<std::string>>>;

    // Logits of shape (N, n_labels); the GIL is released while llama.cpp runs.
    py::array_t<float> classify(const std::vector<std::string> & prompts, const responses_t & responses) const {
        return std::get<0>(score(prompts, responses));
    }

    // Logits, probabilities and flags (bool), each (N, n_labels), from the C library's one verdict rule.
    std::tuple<py::array_t<float>, py::array_t<float>, py::array_t<bool>> score(const std::vector<std::string> & prompts,
                                                                               const responses_t & responses) const {
        auto g = handle_.get("guard");
        if (responses && responses->size() != prompts.size()) {
            throw native_error(LG_ERR_INVALID_ARGUMENT, "responses has " + std::to_string(responses->size()) +
                                                            " items, prompts " + std::to_string(prompts.size()));
        }
        std::vector<lg_input> inputs(prompts.size());
        for (size_t i = 0; i < prompts.size(); ++i) {
            inputs[i] = {prompts[i].data(), prompts[i].size(), nullptr, 0};
            if (responses && (*responses)[i]) {
                inputs[i].response = (*responses)[i]->data();
                inputs[i].response_len = (*responses)[i]->size();
            }
        }
        const auto n_labels = static_cast<py::ssize_t>(lg_guard_n_labels(g.get()));
        const std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(prompts.size()), n_labels};
        py::array_t<float> logits(shape);
        py::array_t<float> probs(shape);
        py::array_t<bool> flagged(shape);
        static_assert(sizeof(bool) == sizeof(uint8_t), "flags are written as bytes");
        float * logits_out = logits.mutable_data();
        float * probs_out = probs.mutable_data();
        auto * flagged_out = reinterpret_cast<uint8_t *>(flagged.mutable_data());
        {
            py::gil_scoped_release release;
            check(lg_guard_classify(g.get(), inputs.data(), inputs.size(), logits_out, probs_out, flagged_out));
        }
        return {logits, probs, flagged};
    }

    std::vector<std::vector<int32_t>> sequences(const std::string & prompt,
                                                const std::optional<std::string> & response) const {
        auto g = handle_.get("guard");
        lg_input input{prompt.data(), prompt.size(), response ? response->data() : nullptr, response ? response->size() : 0};
        size_t n_tokens = 0;
        size_t n_sequences = 0;
        check(lg_guard_sequences(g.get(), &input, nullptr, 0, &n_tokens, nullptr, 0, &n_sequences));
        std::vector<int32_t> tokens(n_tokens);
        std::vector<size_t> lengths(n_sequences);
        check(lg_guard_sequences(g.get(), &input, tokens.data(), tokens.size(), &n_tokens, lengths.data(), lengths.size(),
                                 &n_sequences));
        std::vector<std::vector<int32_t>> out;
        size_t at = 0;
        for (const size_t len : lengths) {
            out.emplace_back(tokens.begin() + static_cast<long>(at), tokens.begin() + static_cast<long>(at + len));
            at += len;
        }
        return out;
    }

    std::vector<int32_t> tokenize(const std::string & prompt, const std::optional<std::string> & response) const {
        auto g = handle_.get("guard");
        lg_input input{prompt.data(), prompt.size(), response ? response->data() : nullptr, response ? response->size() : 0};
        size_t n = 0;
        check(lg_guard_tokenize(g.get(), &input, nullptr, 0, &n));
        std::vector<int32_t> tokens(n);
        check(lg_guard_tokenize(g.get(), &input, tokens.data(), tokens.size(), &n));
        return tokens;
    }

    std::shared_ptr<lg_guard> get() const { return handle_.get("guard"); }
    bool is_alora() const { return lg_guard_is_alora(handle_.get("guard").get()); }
    std::vector<int32_t> invocation() const {
        auto g = handle_.get("guard");
        size_t n = 0;
        check(lg_guard_invocation(g.get(), nullptr, 0, &n));
        std::vector<int32_t> tokens(n);
        check(lg_guard_invocation(g.get(), tokens.data(), tokens.size(), &n));
        return tokens;
    }
    int32_t lora_rank() const { return lg_guard_lora_rank(handle_.get("guard").get()); }
    uint64_t n_params() const { return lg_guard_n_params(handle_.get("guard").get()); }
    std::string warning() const { return lg_guard_warning(handle_.get("guard").get()); }
    void close() { handle_.close(); }
    bool closed() const { return handle_.closed(); }

  private:
    static lg_guard * load(const Model & model, const std::string & path, uint32_t n_ctx, uint32_t n_seq_max,
                           int n_threads, int overflow, bool isolated, bool f32_kv_cache, int flash_attn,
                           uint32_t n_ubatch, size_t max_text_bytes, int text_form, bool read_lines) {
        if (overflow < LG_OVERFLOW_KEEP_END || overflow > LG_OVERFLOW_ERROR) {
            throw native_error(LG_ERR_INVALID_ARGUMENT, "overflow must be 0 (keep_end), 1 (windows) or 2 (error)");
        }
        if (flash_attn < LG_FLASH_ATTN_AUTO || flash_attn > LG_FLASH_ATTN_ON) {
            throw native_error(LG_ERR_INVALID_ARGUMENT, "flash_attn must be -1 (auto), 0 (off) or 1 (on)");
        }
        if (text_form != LG_TEXT_FOLDED && text_form != LG_TEXT_EXACT) {
            throw native_error(LG_ERR_INVALID_ARGUMENT, "text_form must be 0 (folded) or 1 (exact)");
        }
        lg_guard_params p = lg_guard_default_params();
        p.n_ctx = n_ctx;
        p.n_seq_max = n_seq_max;
        p.n_threads = n_threads;
        p.overflow = static_cast<lg_overflow>(overflow);
        p.isolated = isolated;
        p.f32_kv_cache = f32_kv_cache;
        p.flash_attn = static_cast<lg_flash_attn>(flash_attn);
        p.n_ubatch = n_ubatch;
        p.max_text_bytes = max_text_bytes;
        p.text_form = static_cast<lg_text_form>(text_form);
        p.read_lines = read_lines;
        auto m = model.get();
        lg_guard * out = nullptr;
        py::gil_scoped_release release;
        check(lg_guard_load(m.get(), path.c_str(), &p, &out));
        return out;
    }

    guard_handle handle_;
};

}  // namespace

std::shared_ptr<lg_guard> guard_of(const py::object & guard_path) { return guard_path.cast<const GuardPath &>().get(); }

void register_guard(py::module_ & m) {
    py::class_<GuardPath>(m, "GuardPath")
        .def(py::init<const Model &, const std::string &, uint32_t, uint32_t, int, int, bool, bool, int, uint32_t,
                      size_t, int, bool>(),
             py::arg("model"), py::arg("path"), py::arg("n_ctx") = 512, py::arg("n_seq_max") = 32,
             py::arg("n_threads") = 0, py::arg("overflow") = static_cast<int>(lg_guard_default_params().overflow), py::arg("isolated") = false,
             py::arg("f32_kv_cache") = false, py::arg("flash_attn") = -1, py::arg("n_ubatch") = 0,
             py::arg("max_text_bytes") = 0, py::arg("text_form") = static_cast<int>(lg_guard_default_params().text_form),
             py::arg("read_lines") = lg_guard_default_params().read_lines)
        .def_property_readonly("labels", &GuardPath::labels)
        .def_property_readonly("thresholds", &GuardPath::thresholds)
        .def_property_readonly("lora_rank", &GuardPath::lora_rank)
        .def_property_readonly("is_alora", &GuardPath::is_alora)
        .def_property_readonly("invocation", &GuardPath::invocation)
        .def_property_readonly("n_params", &GuardPath::n_params)
        .def_property_readonly("warning", &GuardPath::warning)
        .def_property_readonly("closed", &GuardPath::closed)
        .def("meta", &GuardPath::meta, py::arg("key"))
        .def("classify", &GuardPath::classify, py::arg("prompts"), py::arg("responses") = py::none())
        .def("score", &GuardPath::score, py::arg("prompts"), py::arg("responses") = py::none())
        .def("sequences", &GuardPath::sequences, py::arg("prompt"), py::arg("response") = py::none())
        .def("tokenize", &GuardPath::tokenize, py::arg("prompt"), py::arg("response") = py::none())
        .def("close", &GuardPath::close);
}

}  // namespace lgpy

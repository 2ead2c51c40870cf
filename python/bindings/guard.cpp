#include "bindings.h"

#include <optional>
#include <vector>

namespace lgpy {

namespace {

using guard_handle = handle<lg_guard, lg_guard_free>;

class GuardPath {
  public:
    GuardPath(std::shared_ptr<Model> model, const std::string & path, uint32_t n_ctx, uint32_t n_seq_max,
              int n_threads, int overflow, bool isolated, bool f32_kv_cache, int flash_attn, uint32_t n_ubatch)
        : model_(std::move(model)),
          handle_(load(*model_, path, n_ctx, n_seq_max, n_threads, overflow, isolated, f32_kv_cache, flash_attn,
                       n_ubatch)) {}

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

    // Logits of shape (N, n_labels); the GIL is released while llama.cpp runs.
    py::array_t<float> classify(const std::vector<std::string> & prompts,
                                const std::optional<std::vector<std::optional<std::string>>> & responses) const {
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
        py::array_t<float> logits({static_cast<py::ssize_t>(prompts.size()), n_labels});
        float * out = logits.mutable_data();
        {
            py::gil_scoped_release release;
            check(lg_guard_classify(g.get(), inputs.data(), inputs.size(), out, nullptr, nullptr));
        }
        return logits;
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

    int32_t lora_rank() const { return lg_guard_lora_rank(handle_.get("guard").get()); }
    uint64_t n_params() const { return lg_guard_n_params(handle_.get("guard").get()); }
    std::string warning() const { return lg_guard_warning(handle_.get("guard").get()); }
    void close() { handle_.close(); }
    bool closed() const { return handle_.closed(); }

  private:
    static lg_guard * load(const Model & model, const std::string & path, uint32_t n_ctx, uint32_t n_seq_max,
                           int n_threads, int overflow, bool isolated, bool f32_kv_cache, int flash_attn,
                           uint32_t n_ubatch) {
        lg_guard_params p = lg_guard_default_params();
        p.n_ctx = n_ctx;
        p.n_seq_max = n_seq_max;
        p.n_threads = n_threads;
        p.overflow = static_cast<lg_overflow>(overflow);
        p.isolated = isolated;
        p.f32_kv_cache = f32_kv_cache;
        p.flash_attn = flash_attn;
        p.n_ubatch = n_ubatch;
        auto m = model.get();
        lg_guard * out = nullptr;
        py::gil_scoped_release release;
        check(lg_guard_load(m.get(), path.c_str(), &p, &out));
        return out;
    }

    // Declared before handle_: the guard is freed before the model it points into.
    std::shared_ptr<Model> model_;
    guard_handle handle_;
};

}  // namespace

void register_guard(py::module_ & m) {
    py::class_<GuardPath>(m, "GuardPath")
        .def(py::init<std::shared_ptr<Model>, const std::string &, uint32_t, uint32_t, int, int, bool, bool, int,
                      uint32_t>(),
             py::arg("model"), py::arg("path"), py::arg("n_ctx") = 512, py::arg("n_seq_max") = 32,
             py::arg("n_threads") = 0, py::arg("overflow") = 0, py::arg("isolated") = false,
             py::arg("f32_kv_cache") = false, py::arg("flash_attn") = -1, py::arg("n_ubatch") = 0)
        .def_property_readonly("labels", &GuardPath::labels)
        .def_property_readonly("thresholds", &GuardPath::thresholds)
        .def_property_readonly("lora_rank", &GuardPath::lora_rank)
        .def_property_readonly("n_params", &GuardPath::n_params)
        .def_property_readonly("warning", &GuardPath::warning)
        .def_property_readonly("closed", &GuardPath::closed)
        .def("meta", &GuardPath::meta, py::arg("key"))
        .def("classify", &GuardPath::classify, py::arg("prompts"), py::arg("responses") = py::none())
        .def("tokenize", &GuardPath::tokenize, py::arg("prompt"), py::arg("response") = py::none())
        .def("close", &GuardPath::close);
}

}  // namespace lgpy

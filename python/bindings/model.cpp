#include "bindings.h"

#include <vector>

namespace lgpy {

namespace {

lg_model * load(const std::string & path, int n_gpu_layers, int cpu_repack, bool use_mmap, bool verbose,
                int n_threads) {
    if (cpu_repack < LG_CPU_REPACK_AUTO || cpu_repack > LG_CPU_REPACK_ON) {
        throw native_error(LG_ERR_INVALID_ARGUMENT, "cpu_repack must be -1 (auto), 0 (off) or 1 (on)");
    }
    lg_model_params p = lg_model_default_params();
    p.n_gpu_layers = n_gpu_layers;
    p.cpu_repack = static_cast<lg_cpu_repack>(cpu_repack);
    p.use_mmap = use_mmap;
    p.verbose = verbose;
    p.n_threads = n_threads;
    lg_model * out = nullptr;
    {
        py::gil_scoped_release release;
        check(lg_model_load(path.c_str(), &p, &out));
    }
    return out;
}

}  // namespace

Model::Model(const std::string & path, int n_gpu_layers, int cpu_repack, bool use_mmap, bool verbose, int n_threads)
    : handle_(load(path, n_gpu_layers, cpu_repack, use_mmap, verbose, n_threads)) {}

void register_model(py::module_ & m) {
    py::class_<Model, std::shared_ptr<Model>>(m, "Model")
        .def(py::init<const std::string &, int, int, bool, bool, int>(), py::arg("path"), py::arg("n_gpu_layers") = 0,
             py::arg("cpu_repack") = -1, py::arg("use_mmap") = true, py::arg("verbose") = false,
             py::arg("n_threads") = 0)
        .def_property_readonly("n_threads", [](const Model & s) { return lg_model_n_threads(s.get().get()); })
        .def_property_readonly("architecture", [](const Model & s) { return std::string(lg_model_architecture(s.get().get())); })
        .def_property_readonly("name", [](const Model & s) { return std::string(lg_model_name(s.get().get())); })
        .def_property_readonly("fingerprint", [](const Model & s) { return std::string(lg_model_fingerprint(s.get().get())); })
        .def_property_readonly("file_type", [](const Model & s) { return std::string(lg_model_file_type(s.get().get())); })
        .def_property_readonly("n_embd", [](const Model & s) { return lg_model_n_embd(s.get().get()); })
        .def_property_readonly("n_layer", [](const Model & s) { return lg_model_n_layer(s.get().get()); })
        .def_property_readonly("n_vocab", [](const Model & s) { return lg_model_n_vocab(s.get().get()); })
        .def_property_readonly("n_params", [](const Model & s) { return lg_model_n_params(s.get().get()); })
        .def_property_readonly("is_encoder", [](const Model & s) { return lg_model_is_encoder(s.get().get()); })
        .def_property_readonly("closed", &Model::closed)
        .def(
            "tokenize",
            [](const Model & s, const std::string & text, bool add_special, bool parse_special) {
                auto model = s.get();
                size_t n = 0;
                check(lg_model_tokenize(model.get(), text.data(), text.size(), add_special, parse_special, nullptr, 0, &n));
                std::vector<int32_t> tokens(n);
                check(lg_model_tokenize(model.get(), text.data(), text.size(), add_special, parse_special, tokens.data(),
                                        tokens.size(), &n));
                return tokens;
            },
            py::arg("text"), py::arg("add_special") = true, py::arg("parse_special") = false)
        .def("close", &Model::close)
        .def_static("default_n_threads", &lg_default_n_threads)
        .def_static(
            "quantize",
            [](const std::string & input, const std::string & output, const std::string & type, int n_threads) {
                py::gil_scoped_release release;
                check(lg_quantize(input.c_str(), output.c_str(), type.c_str(), n_threads));
            },
            py::arg("input"), py::arg("output"), py::arg("type"), py::arg("n_threads") = 0);
}

}  // namespace lgpy

#include "bindings.h"

PYBIND11_MODULE(_native, m) {
    m.doc() = "loraguard native runtime (C API bindings); use loraguard_cpp.Guard";

    // Exceptions are defined in Python (loraguard_cpp.errors) so they are typed and documented there.
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) {
                std::rethrow_exception(p);
            }
        } catch (const lgpy::native_error & e) {
            py::object make = py::module_::import("loraguard_cpp.errors").attr("from_status");
            py::object exc = make(static_cast<int>(e.status), e.what());
            PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(exc.ptr())), exc.ptr());
        }
    });

    m.attr("FORMAT_VERSION") = LORAGUARD_FORMAT_VERSION;
    m.def(
        "fold_text",
        [](const std::string & text) {
            size_t n = 0;
            lgpy::check(lg_fold_text(text.data(), text.size(), nullptr, 0, &n));
            std::string out(n, '\0');
            lgpy::check(lg_fold_text(text.data(), text.size(), out.data(), out.size(), &n));
            return out;
        },
        py::arg("text"), "The text a guard reads for this text (its default text form, LG_TEXT_FOLDED).");
    m.def(
        "decoded_reading",
        [](const std::string & text) -> std::optional<std::string> {
            size_t n = 0;
            bool found = false;
            lgpy::check(lg_decoded_reading(text.data(), text.size(), nullptr, 0, &n, &found));
            if (!found) {
                return std::nullopt;
            }
            std::string out(n, '\0');
            lgpy::check(lg_decoded_reading(text.data(), text.size(), out.data(), out.size(), &n, &found));
            return out;
        },
        py::arg("text"),
        "The second text a folding guard reads for this text (base64 decoded, leetspeak as letters), or None.");
    m.def(
        "text_lines",
        [](const std::string & text) {
            size_t n = 0;
            size_t n_lines = 0;
            lgpy::check(lg_text_lines(text.data(), text.size(), nullptr, 0, &n, &n_lines));
            std::vector<std::string> lines;
            if (n_lines == 0) {
                return lines;
            }
            std::string joined(n, '\0');
            lgpy::check(lg_text_lines(text.data(), text.size(), joined.data(), joined.size(), &n, &n_lines));
            for (size_t begin = 0;;) {
                const size_t end = joined.find('\n', begin);
                lines.push_back(joined.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
                if (end == std::string::npos) {
                    return lines;
                }
                begin = end + 1;
            }
        },
        py::arg("text"), "The lines a folding guard also reads alone when it judges this text as a prompt (or []).");
    lgpy::register_model(m);
    lgpy::register_guard(m);
    lgpy::register_chat(m);
}

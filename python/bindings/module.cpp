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
    lgpy::register_model(m);
    lgpy::register_guard(m);
    lgpy::register_chat(m);
}

// Shared pieces of the pybind11 bindings: handle ownership and status-to-exception mapping.
#pragma once

#include "loraguard.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace lgpy {

// Python str or bytes arguments arrive as std::string: UTF-8 bytes, NUL bytes included.
inline lg_message message_of(const std::string & role, const std::string & content) {
    return {role.data(), role.size(), content.data(), content.size()};
}

// A failed C call; translated into the matching loraguard_cpp.errors exception.
struct native_error : std::runtime_error {
    native_error(lg_status s, const std::string & message) : std::runtime_error(message), status(s) {}
    lg_status status;
};

// Call with the GIL released or held; raises native_error with the C API's message on failure.
inline void check(lg_status status) {
    if (status != LG_OK) {
        throw native_error(status, lg_last_error());
    }
}

// Owns a C handle; calls take a reference-counted copy, so close() during another thread's call only drops the
// handle's own reference: the call finishes on a live object, which is freed when the last call returns, and
// later calls fail with "... is closed".
template <typename T, void (*Free)(T *)> class handle {
  public:
    explicit handle(T * raw) : ptr_(raw, Free) {}
    std::shared_ptr<T> get(const char * what) const {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!ptr_) {
            throw native_error(LG_ERR_INVALID_ARGUMENT, std::string(what) + " is closed");
        }
        return ptr_;
    }
    std::shared_ptr<T> peek() const {  // nullptr once closed
        std::lock_guard<std::mutex> lock(mutex_);
        return ptr_;
    }
    void close() {
        std::lock_guard<std::mutex> lock(mutex_);
        ptr_.reset();
    }
    bool closed() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return !ptr_;
    }

  private:
    mutable std::mutex mutex_;
    std::shared_ptr<T> ptr_;
};

class Model;
using model_handle = handle<lg_model, lg_model_free>;

// The Python-side owner of an lg_model. Guard and chat paths made from it hold references of their own in the C
// library, so closing the model while they live only drops this one.
class Model {
  public:
    Model(const std::string & path, int n_gpu_layers, int cpu_repack, bool use_mmap, bool verbose, int n_threads);
    std::shared_ptr<lg_model> get() const { return handle_.get("model"); }
    void close() { handle_.close(); }
    bool closed() const { return handle_.closed(); }

  private:
    model_handle handle_;
};

// The lg_guard of a Python GuardPath (guard.cpp), for calls that judge a chat with it.
std::shared_ptr<lg_guard> guard_of(const py::object & guard_path);

void register_model(py::module_ & m);
void register_guard(py::module_ & m);
void register_chat(py::module_ & m);

}  // namespace lgpy

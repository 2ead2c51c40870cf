// Errors inside the library are C++ exceptions carrying an lg_status; the C API turns them into a status code
// plus the calling thread's last-error message, so nothing crosses the ABI as an exception.
#pragma once

#include "loraguard.h"

#include <stdexcept>
#include <string>

namespace lg {

class error : public std::runtime_error {
  public:
    error(lg_status status, const std::string & message) : std::runtime_error(message), status_(status) {}
    lg_status status() const { return status_; }

  private:
    lg_status status_;
};

[[noreturn]] void fail(lg_status status, const std::string & message);

void set_last_error(const std::string & message);
const char * last_error();

// Runs fn, mapping any exception to a status and the thread's last-error message.
template <typename Fn> lg_status call(Fn && fn) {
    try {
        fn();
        set_last_error("");
        return LG_OK;
    } catch (const error & e) {
        set_last_error(e.what());
        return e.status();
    } catch (const std::bad_alloc &) {
        set_last_error("out of memory");
        return LG_ERR_BACKEND;
    } catch (const std::exception & e) {
        set_last_error(std::string("internal error: ") + e.what());
        return LG_ERR_INTERNAL;
    } catch (...) {
        set_last_error("internal error: unknown exception");
        return LG_ERR_INTERNAL;
    }
}

}  // namespace lg

#include "lg-error.h"

namespace lg {

namespace {
thread_local std::string g_last_error;
}

void fail(lg_status status, const std::string & message) { throw error(status, message); }

void set_last_error(const std::string & message) { g_last_error = message; }

const char * last_error() { return g_last_error.c_str(); }

}  // namespace lg

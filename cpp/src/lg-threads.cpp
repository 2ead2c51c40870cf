#include "lg-threads.h"

#include "ggml.h"
#include "lg-error.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>

#if defined(__linux__)
#    include <sched.h>
#endif

namespace lg {

int default_n_threads() {
    int cores = static_cast<int>(std::thread::hardware_concurrency());
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        cores = CPU_COUNT(&set);
    }
#endif
    cores = std::max(cores, 1);
#if defined(__unix__) || defined(__APPLE__)
    double load = 0.0;
    if (getloadavg(&load, 1) == 1) {
        const int busy = static_cast<int>(std::floor(load));
        cores = std::max(1, cores - busy);
    }
#endif
    return cores;
}

}  // namespace lg

namespace lg {

int resolve_n_threads(int requested) {
    if (requested <= 0) {
        return default_n_threads();
    }
    if (requested > GGML_MAX_N_THREADS) {
        fail(LG_ERR_INVALID_ARGUMENT, "n_threads " + std::to_string(requested) + " is more than llama.cpp supports (" +
                                          std::to_string(GGML_MAX_N_THREADS) + ")");
    }
    return requested;
}

}  // namespace lg

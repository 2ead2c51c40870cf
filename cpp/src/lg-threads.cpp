#include "lg-threads.h"

#include "ggml.h"
#include "lg-error.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <utility>
#include <string>
#include <thread>

#if defined(__linux__)
#    include <sched.h>
#endif

namespace lg {

namespace {

// The first two whitespace-separated fields of a file ("" where it cannot be read).
std::pair<std::string, std::string> read_fields(const std::string & path) {
    std::ifstream f(path);
    std::string a;
    std::string b;
    f >> a >> b;
    return {a, b};
}

int cpus_of(const std::string & quota, const std::string & period) {
    const long long q = std::atoll(quota.c_str());
    const long long p = std::atoll(period.c_str());
    return q > 0 && p > 0 ? static_cast<int>((q + p - 1) / p) : 0;
}

// The tightest CPU quota on this process's cgroup and its ancestors, in whole CPUs (rounded up), or 0 for none.
// Containers get their CPU limit this way while still seeing every core of the host. cgroup v2 keeps it in
// cpu.max ("max" or "QUOTA PERIOD"), v1 in cpu.cfs_quota_us / cpu.cfs_period_us of the cpu controller.
int cgroup_cpu_quota() {
#if defined(__linux__)
    std::ifstream self("/proc/self/cgroup");
    std::string line;
    int tightest = 0;
    const auto consider = [&](int cpus) {
        if (cpus > 0 && (tightest == 0 || cpus < tightest)) {
            tightest = cpus;
        }
    };
    while (std::getline(self, line)) {
        // "ID:CONTROLLERS:PATH"; v2 has ID 0 and no controllers
        const size_t a = line.find(':');
        const size_t b = a == std::string::npos ? a : line.find(':', a + 1);
        if (b == std::string::npos) {
            continue;
        }
        const std::string controllers = line.substr(a + 1, b - a - 1);
        std::string path = line.substr(b + 1);
        const bool v2 = controllers.empty();
        const bool v1_cpu = ("," + controllers + ",").find(",cpu,") != std::string::npos;
        if (!v2 && !v1_cpu) {
            continue;
        }
        for (;;) {
            if (v2) {
                const auto [quota, period] = read_fields("/sys/fs/cgroup" + path + "/cpu.max");
                consider(quota == "max" ? 0 : cpus_of(quota, period));
            } else {
                for (const char * mount : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"}) {
                    const std::string dir = mount + path;
                    consider(cpus_of(read_fields(dir + "/cpu.cfs_quota_us").first,
                                     read_fields(dir + "/cpu.cfs_period_us").first));
                }
            }
            if (path.empty() || path == "/") {
                break;
            }
            const size_t slash = path.find_last_of('/');
            path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
        }
    }
    return tightest;
#else
    return 0;
#endif
}

}  // namespace

int default_n_threads() {
    int cores = static_cast<int>(std::thread::hardware_concurrency());
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        cores = CPU_COUNT(&set);
    }
#endif
    if (const int quota = cgroup_cpu_quota(); quota > 0) {
        cores = std::min(cores, quota);
    }
    return std::max(cores, 1);
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

#pragma once

namespace lg {

// Threads when the user names none: the cores this process may run on (CPU affinity), capped by the cgroup CPU
// quota where one is set. Read anew on each call, so a long-lived process follows a changed quota.
int default_n_threads();

// The thread count for a call: default_n_threads() for requested <= 0; fails with LG_ERR_INVALID_ARGUMENT past
// ggml's limit (GGML_MAX_N_THREADS), where ggml would crash.
int resolve_n_threads(int requested);

}  // namespace lg

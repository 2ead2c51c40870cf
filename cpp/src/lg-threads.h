#pragma once

namespace lg {

// Threads for a call when the user names none: the cores this process may run on, less the cores other
// processes keep busy (two threads sharing one free core run slower than one).
int default_n_threads();

// The thread count for a call: default_n_threads() for requested <= 0; fails with LG_ERR_INVALID_ARGUMENT past
// ggml's limit (GGML_MAX_N_THREADS), where ggml would crash.
int resolve_n_threads(int requested);

}  // namespace lg

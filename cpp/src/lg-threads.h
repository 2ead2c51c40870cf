#pragma once

namespace lg {

// Threads for a call when the user names none: the cores this process may run on, less the cores other
// processes keep busy (two threads sharing one free core run slower than one).
int default_n_threads();

}  // namespace lg

"""loraguard's benchmark: the guard against its peers in one run (see bench/README.md)."""

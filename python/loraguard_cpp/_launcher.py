"""The ``loraguard-cli`` entry point: a broken installation (the native extension missing, or built against
another llama-cpp-python) is reported like every other error, one line and exit code 2, not as a traceback whose
exit code 1 would read as "flagged"."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from .cli import main as cli_main
    except ImportError as e:
        print(f"loraguard-cli: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())

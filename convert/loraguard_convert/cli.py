"""Command line: `loraguard-convert {base,guard,inspect,measured}`."""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .base import DEFAULT_OUTTYPE, OUTTYPES, convert_base
from .errors import ConvertError
from .guard import DEFAULT_GUARD_OUTTYPE, convert_guard
from .inspect import format_report, inspect_guard
from .metadata import set_measured_types

PROG = "loraguard-convert"
EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    # One line on every error path, usage included, so scripts can show it as is.
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Convert models and guard checkpoints to GGUF for loraguard.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{base,guard,inspect,measured}")

    base = commands.add_parser("base", help="convert a Hugging Face model directory to a base GGUF")
    base.add_argument("hf_dir", type=Path, metavar="HF_DIR")
    base.add_argument("out", type=Path, metavar="OUT.gguf")
    base.add_argument("--outtype", choices=OUTTYPES, default=DEFAULT_OUTTYPE, help=f"default {DEFAULT_OUTTYPE}")
    base.add_argument("-q", "--quiet", action="store_true", help="hide llama.cpp's converter output")

    guard = commands.add_parser("guard", help="convert a guard checkpoint directory to a guard GGUF")
    guard.add_argument("ckpt_dir", type=Path, metavar="CKPT_DIR")
    guard.add_argument("out", type=Path, metavar="OUT.gguf")
    guard.add_argument(
        "--base", type=Path, metavar="BASE.gguf", help="base model GGUF; its fingerprint is checked or filled in"
    )
    guard.add_argument(
        "--outtype",
        choices=OUTTYPES,
        default=DEFAULT_GUARD_OUTTYPE,
        help=f"LoRA tensor type, default {DEFAULT_GUARD_OUTTYPE} (exact); f16 halves the file",
    )
    guard.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    inspect = commands.add_parser("inspect", help="show what a guard GGUF contains")
    inspect.add_argument("file", type=Path, metavar="FILE.gguf")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    measured = commands.add_parser(
        "measured", help="record the base types a guard's accuracy was measured on (the runtime warns on others)"
    )
    measured.add_argument("file", type=Path, metavar="GUARD.gguf")
    measured.add_argument("types", nargs="*", metavar="TYPE", help="F16, Q8_0, Q4_1, ... (none: clear the list)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "base":
            out = convert_base(args.hf_dir, args.out, args.outtype, quiet=args.quiet)
            print(f"wrote {out}", file=sys.stderr)
        elif args.command == "guard":
            out = convert_guard(args.ckpt_dir, args.out, args.base, outtype=args.outtype, quiet=args.quiet)
            print(f"wrote {out}", file=sys.stderr)
        elif args.command == "measured":
            out = set_measured_types(args.file, args.types)
            print(f"wrote {out}: measured on {', '.join(args.types) or 'no types recorded'}", file=sys.stderr)
        else:
            info = inspect_guard(args.file)
            print(json.dumps(info, indent=2) if args.json else format_report(info))
    # OSError: unreadable inputs, full disks and the like; the message says it all, a traceback adds nothing.
    except (ConvertError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0

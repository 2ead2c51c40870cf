"""`loraguard-convert base`: Hugging Face model directory -> base GGUF, by the pinned convert_hf_to_gguf.py."""

from pathlib import Path

from .atomic import atomic_output, check_output_path
from .errors import ConvertError
from .llama_cpp_source import converter_script
from .subproc import run_converter

# What the pinned converters write (a base's weights, a guard's LoRA tensors) and loraguard's runtime runs.
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_OUTTYPE = "f16"


def check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise ConvertError(f"unsupported --outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")


def convert_base(
    hf_dir: Path | str, out_path: Path | str, outtype: str = DEFAULT_OUTTYPE, *, quiet: bool = True
) -> Path:
    """Convert HF_DIR to a GGUF at OUT_PATH; the file appears only once complete."""
    hf_dir = Path(hf_dir)
    out_path = check_output_path(Path(out_path))
    check_outtype(outtype)
    if not (hf_dir / "config.json").is_file():
        raise ConvertError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    script = converter_script("convert_hf_to_gguf.py")
    with atomic_output(out_path) as tmp:
        run_converter(script, [str(hf_dir), "--outfile", str(tmp), "--outtype", outtype], echo=not quiet)
    return out_path

"""The markdown report and PNG plots of one bench/run result (the JSON's fields are in bench/README.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.worker import VERDICT_TOKENS

DESCRIPTIONS = {
    "loraguard": "loraguard, Python `Guard` (guard path: LoRA + head, no LM head)",
    "loraguard-cli": "`loraguard-cli classify`, a process per call (start-up included)",
    "torch-fp32": "same guard, PyTorch + PEFT, CPU fp32",
    "torch-bf16": "same guard, PyTorch + PEFT, CPU bf16",
    "llama-cpp-python": "same guard as a plain LoRA on llama-cpp-python (low-level API), pooled LAST, numpy head",
    "generative": f"separate generative guard (Llama-Guard-3-1B shape, its prompt): prefill + {VERDICT_TOKENS} "
                  "verdict tokens",
    "limit": "the floor: base model on stock llama.cpp, no adapter, last-token logits only",
}

# CPU that other processes may take, on average over the run, before the report calls the machine busy
QUIET_FOREIGN_CORES = 0.1
_EXTRA_BUFTS_OFF = ("off for models with AMX-kernel tensor types (AMX CPU: loraguard turns them off there, so the "
                    "stock contenders do too), on otherwise")


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _lengths(case: Mapping[str, Any]) -> list[str]:
    return sorted({n for c in case["contenders"].values() for n in c.get("latency", {})}, key=int)


def _case_section(case: Mapping[str, Any]) -> list[str]:
    m, g = case["model"], case["guard"]
    out = [f"### {case['name']}{' (primary)' if case['primary'] else ''}", ""]
    out.append(
        f"{case['description']}. Base file {m['file']}: {m['file_mib']:.0f} MiB, {m['params'] / 1e6:.0f} M params "
        f"({m['compute_params'] / 1e6:.0f} M in the layers). Guard file: {g['file_mib']:.1f} MiB, "
        f"{g['params'] / 1e6:.2f} M params = {100 * g['params_vs_base']:.2f} % of the base, pooling "
        f"{g['pooling']}. Contexts of {case['n_ctx']} tokens."
    )
    if case["mem_available_mib"] is not None:
        out.append(f"Memory available with every contender loaded: {case['mem_available_mib'] / 1024:.1f} GiB.")
    if "generative_model" in case:
        gm = case["generative_model"]
        out.append(f"Generative guard: {gm['shape']} shape (random weights), {gm['file']}, {gm['file_mib']:.0f} MiB.")
    out.append("")
    lengths = _lengths(case)
    header = ["contender", *[f"{n} tok: p50 / p95 ms (calls)" for n in lengths], "loraguard / it, p50",
              "load s", "peak RSS MiB"]
    rows = []
    for name, c in case["contenders"].items():
        if "error" in c and "latency" not in c:
            continue
        lat = c.get("latency", {})
        cells = [f"{_ms(lat[n]['p50_ms'])} / {_ms(lat[n]['p95_ms'])} ({lat[n]['n']})" if n in lat else "-"
                 for n in lengths]
        ratio = c.get("ratio_loraguard", {})
        ratio_cell = ", ".join(f"{ratio[n]:.2f}" for n in lengths if n in ratio) if name != "loraguard" else "1"
        load = f"{c['load_s']:.2f}" if "load_s" in c else "per call"
        rss = f"{c['peak_rss_mib']:.0f}" if "peak_rss_mib" in c else "-"
        rows.append([name, *cells, ratio_cell or "-", load, rss])
    out += _table(header, rows)
    out.append("")
    gflops = case["contenders"].get("loraguard", {}).get("gflops", {})
    if gflops:
        frac = case["gflops_peak_fraction"]
        out.append("loraguard achieved GFLOP/s (2 x layer params x tokens / p50): " + ", ".join(
            f"{n} tok {gflops[n]:.3g} ({100 * frac[n]:.2g} % of F32 sgemm peak)" for n in lengths if n in gflops))
        out.append("")
    tp_rows = []
    for name, c in case["contenders"].items():
        for n, t in c.get("throughput", {}).items():
            tp_rows.append([name, n, str(t["n_texts"]), f"{t['batched_texts_s']:.3g}", f"{t['single_texts_s']:.3g}",
                            f"{t['batched_texts_s'] / t['single_texts_s']:.2f}"])
    if tp_rows:
        out += _table(["contender", "tokens", "texts", "batched texts/s", "one-by-one texts/s", "batched / one-by-one"],
                      tp_rows)
        out.append("")
    failed = {name: c["error"] for name, c in case["contenders"].items() if "error" in c}
    for name, error in failed.items():
        first = error.strip().splitlines()[0] if error.strip() else "no output"
        out.append(f"- {name} failed: `{first[:300]}` (full text in the JSON)")
    if failed:
        out.append("")
    return out


def _primary_extras(case: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    s = case.get("startup")
    if s:
        torch_s = f"{s['torch-fp32_s']:.2f} s" if s.get("torch-fp32_s") else "failed"
        out.append(f"Process start to first result (median of {s['reps']}, files in the page cache): "
                   f"loraguard-cli {s['loraguard-cli_s']:.2f} s, PyTorch+PEFT fp32 {torch_s}.")
    for entry in case.get("added_memory", []):
        parts = []
        for name in ("loraguard", "generative"):
            a = entry.get(name, {})
            parts.append(f"{name} +{a['added_mib']:.1f} MiB (chat alone {a['chat_peak_rss_mib']:.0f} MiB)"
                         if "added_mib" in a else f"{name} failed")
        out.append(f"Peak RSS added to a process already running the chat model, guard context of {entry['n_ctx']} "
                   f"tokens, a {entry['tokens']}-token text: " + ", ".join(parts) + ".")
    busy = case.get("busy")
    if busy:
        cells = []
        for label, b in busy["contenders"].items():
            if "latency" in b:
                extra = ""
                if label == "default":
                    extra = f", loadavg {b['loadavg_at_load']:.2f} -> {b['n_threads']} threads"
                cells.append(f"{label} {_ms(b['latency']['p50_ms'])} ms{extra}")
        out.append(f"Busy machine (another process spinning on one core), {busy['tokens']} tokens, p50: "
                   + "; ".join(cells) + ".")
    return [*out, ""] if out else out


def markdown(result: Mapping[str, Any], plots: Sequence[Path]) -> str:
    m, s = result["machine"], result["settings"]
    out = [f"# loraguard benchmark, {result['date']}{' (smoke)' if result['smoke'] else ''}", ""]
    out.append(f"Command: `{result['command']}` ({result['wall_s'] / 60:.1f} min).")
    out.append(
        f"Machine: {m['cpu']}, {m['cores']} cores{' with AMX' if m['amx'] else ''}, {m['ram_gib']} GiB RAM, "
        f"{m['os']}; Python {m['python']}, llama-cpp-python {m['llama_cpp_python']}, torch {m['torch']}, numpy "
        f"{m['numpy']}. Other processes used {m['foreign_cpu_cores']:.2f} cores on average during the run "
        f"(the hypervisor stole {m['steal_cores']:.2f}); load average at start {m['loadavg_start'][0]:.2f}, at end "
        f"{m['loadavg_end'][0]:.2f}."
    )
    out.append(
        f"Settings, the same for every contender: {s['threads']} threads, llama.cpp contexts of {s['n_ctx']} "
        f"tokens, compute steps of {s['n_ubatch']} tokens (encoders: the whole context), up to {s['n_seq_max']} "
        f"texts per batched decode, K/V cache {s['kv_cache']}, flash attention {s['flash_attn']}, llama.cpp "
        f"extra CPU buffer types {'on' if s['llama_cpp_extra_buffer_types'] else _EXTRA_BUFTS_OFF}. "
        f"Latency: p50/p95 over {s['min_reps']}-{s['max_reps']} calls per length after a warm-up call, contenders "
        "interleaved call by call (rotating order) on the same texts of exact token length (template included), "
        "each contender in its own process. Weights are random: speed does not depend on their values."
    )
    if m["foreign_cpu_cores"] > QUIET_FOREIGN_CORES:
        out.append("")
        out.append(
            f"**Warning: the machine was not quiet**: other processes used {m['foreign_cpu_cores']:.2f} of "
            f"{m['cores']} cores on average. "
            "Other processes competed for the CPU; that slows llama.cpp's multi-threaded decodes most (its threads "
            "meet at every op and wait for one that was preempted), so absolute numbers are pessimistic and ratios "
            "against PyTorch favour PyTorch. Interleaving spreads the disturbance over all contenders alike."
        )
    out.append("")
    out.append("Contenders: " + "; ".join(f"**{k}**: {v}" for k, v in DESCRIPTIONS.items()) + ".")
    out.append("")
    out.append("## Targets (primary case)")
    out.append("")
    met = {True: "met", False: "**missed**", None: "not measured"}
    out += _table(["target", "wanted", "measured", ""],
                  [[t["target"], t["wanted"], t["measured"], met[t["met"]]] for t in result["targets"]])
    out.append("")
    peaks = result["sgemm_peak_gflops"]
    out.append("Matrix-multiply peak of this machine in this run (2048^3, best of before and after the cases), "
               "GFLOP/s: " + "; ".join(f"{n} thread(s): " + ", ".join(f"{k} {v:.0f}" for k, v in p.items())
                                        for n, p in peaks.items()) + ".")
    out.append("")
    out.append("## Cases")
    out.append("")
    for case in result["cases"]:
        out += _case_section(case)
        if case["primary"]:
            out += _primary_extras(case)
    for reason in result["skipped"]:
        out.append(f"- skipped: {reason}")
    if result["skipped"]:
        out.append("")
    if plots:
        out.append("## Plots")
        out.append("")
        out += [f"![{p.stem}]({p.name})" for p in plots]
        out.append("")
    return "\n".join(out)


def plots(result: Mapping[str, Any], stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = next(c for c in result["cases"] if c["primary"])
    written: list[Path] = []

    def save(fig: Any, suffix: str) -> None:
        path = stem.parent / f"{stem.name}-{suffix}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in primary["contenders"].items():
        lat = c.get("latency", {})
        if lat:
            ns = sorted(lat, key=int)
            ax.errorbar([int(n) for n in ns], [lat[n]["p50_ms"] for n in ns], marker="o", label=name, capsize=3,
                        yerr=[[0] * len(ns), [lat[n]["p95_ms"] - lat[n]["p50_ms"] for n in ns]])
    ax.set(xscale="log", yscale="log", xlabel="tokens per text", ylabel="latency, ms (p50, bar to p95)",
           title=f"One text per call: {primary['name']}")
    ax.legend(fontsize=8)
    save(fig, "latency")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for case in result["cases"]:
        r = case["contenders"].get("limit", {}).get("ratio_loraguard", {})
        if r:
            ns = sorted(r, key=int)
            ax.plot([int(n) for n in ns], [r[n] for n in ns], marker="o", label=case["name"])
    ax.axhline(1.05, color="grey", linestyle="--", linewidth=1, label="target 1.05")
    ax.set(xscale="log", xlabel="tokens per text", ylabel="loraguard / limit, p50 time",
           title="Cost of the guard over the base model's own forward")
    ax.legend(fontsize=8)
    save(fig, "vs-limit")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in primary["contenders"].items():
        r = c.get("ratio_loraguard", {})
        if r:
            ns = sorted(r, key=int)
            ax.plot([int(n) for n in ns], [r[n] for n in ns], marker="o", label=name)
    ax.axhline(1.0, color="grey", linewidth=1)
    ax.set(xscale="log", yscale="log", xlabel="tokens per text", ylabel="loraguard / contender, p50 time",
           title=f"loraguard against each contender (< 1: loraguard faster)\n{primary['name']}")
    ax.legend(fontsize=8)
    save(fig, "ratios")

    tp = primary["contenders"].get("loraguard", {}).get("throughput", {})
    if tp:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ns = sorted(tp, key=int)
        xs = range(len(ns))
        ax.bar([x - 0.2 for x in xs], [tp[n]["batched_texts_s"] for n in ns], width=0.4, label="batched")
        ax.bar([x + 0.2 for x in xs], [tp[n]["single_texts_s"] for n in ns], width=0.4, label="one by one")
        ax.set_xticks(list(xs), [f"{n} tok\n({tp[n]['n_texts']} texts)" for n in ns])
        ax.set(yscale="log", ylabel="texts/s", title="loraguard: batched against one by one")
        ax.legend()
        save(fig, "throughput")

    rss = {name: c["peak_rss_mib"] for name, c in primary["contenders"].items() if "peak_rss_mib" in c}
    if rss:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.barh(list(rss), list(rss.values()))
        ax.set(xlabel="peak RSS of the contender's process, MiB", title=f"Memory: {primary['name']}")
        save(fig, "memory")
    return written

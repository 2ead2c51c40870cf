"""loraguard-train and loraguard-eval end to end, and the data loaders and metrics under them.

Real data only (../shared/data): the loaders are checked on the real files, and both end-to-end runs train a
few steps on real ToxicChat rows, convert, and score through the native runtime. The tiny random-init Llama
(stories260K's tokenizer) covers decoders and resuming; all-MiniLM-L6-v2 covers encoders and calibration.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:
    import torch
    from gguf import GGUFReader

    from loraguard_convert import ConvertError, inspect_guard, set_thresholds
    from loraguard_train.cli import eval_main, train_main
    from loraguard_train.config import ConfigError, build_config, read_recipe
    from loraguard_train.data import (
        OPENAI_CATEGORIES,
        Columns,
        DataError,
        Dataset,
        Record,
        load_dataset,
        only_label,
        sample,
        split_dataset,
    )
    from loraguard_train.evaluate import Evaluation, Scored, calibrate_fpr
    from loraguard_train.metrics import (
        average_precision,
        best_f1_threshold,
        flag_threshold,
        label_metrics,
        roc_auc,
    )
    from loraguard_train.template import keep_end
    from loraguard_train.train import labelled_splits
except ImportError as e:
    pytest.skip(f"training dependencies missing ({e}); pip install -e '.[train,dev]'", allow_module_level=True)

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
TOXICCHAT = DATA / "toxicchat0124_train_human_annotated.jsonl"
OPENAI = DATA / "openai_moderation_test.jsonl"
OPENAI_RAW = DATA / "raw" / "openai_moderation" / "samples-1680.jsonl.gz"
BEAVERTAILS = DATA / "beavertails_30k_test.jsonl"
XSTEST = DATA / "xstest_prompts.jsonl"

ABSENT = f"{DATA} is absent (the shared data checkout beside the repo)"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=ABSENT)

# what `loraguard-eval --json` promises per data set and per label (docs/training.md)
DATASET_FIELDS = {
    "name", "rows", "seconds", "texts_per_s", "safe_rows", "safe_flag_rate", "unsafe_rows", "unsafe_caught", "labels"
}
LABEL_FIELDS = {"n", "n_pos", "auprc", "roc_auc", "threshold", "precision", "recall", "f1", "fpr"}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------------------------
# loaders on the real files


@needs_data
def test_every_shared_file_loads() -> None:
    files = sorted(DATA.glob("*.jsonl"))
    assert len(files) >= 15
    for path in files:
        ds = load_dataset(path)
        assert len(ds) > 0 and ds.labels[0] == "unsafe", path


@needs_data
def test_toxicchat_jsonl() -> None:
    ds = load_dataset(TOXICCHAT, target="prompt")
    assert len(ds) == 2801 and ds.labels == ["unsafe", "jailbreaking"]
    y = ds.targets(ds.labels)
    assert int(y[:, 0].sum()) == 384 and int(y[:, 1].sum()) == 113 and not np.isnan(y).any()
    assert ds.responses is None


@needs_data
def test_openai_moderation_jsonl_and_original_release_agree() -> None:
    shared = load_dataset(OPENAI)
    raw = load_dataset(OPENAI_RAW)
    assert len(shared) == len(raw) == 1680
    assert shared.prompts == raw.prompts
    assert [dict(r.labels) for r in shared.records] == [dict(r.labels) for r in raw.records]
    assert shared.labels[0] == "unsafe" and set(shared.labels[1:]) == set(OPENAI_CATEGORIES.values())
    y = shared.targets(["unsafe", "hate", "sexual/minors"])
    assert int(y[:, 0].sum()) == 522
    # a category missing from a row is unknown, not safe
    assert int(np.isnan(y[:, 1]).sum()) == 1680 - 771 and int(np.isnan(y[:, 2]).sum()) == 1680 - 994


@needs_data
def test_beavertails_targets() -> None:
    pair = load_dataset(BEAVERTAILS)
    assert len(pair) == 3021 and all(r.response for r in pair.records)
    assert len(pair.labels) == 15 and "animal_abuse" in pair.labels
    assert int(pair.targets(["unsafe"]).sum()) == 1733
    response_only = load_dataset(BEAVERTAILS, target="response")
    assert response_only.prompts == [r.response for r in pair.records] and response_only.responses is None
    with pytest.raises(DataError, match=r"labels judge the response.*--target pair"):
        load_dataset(BEAVERTAILS, target="prompt")
    with pytest.raises(DataError, match="no response to judge"):
        load_dataset(XSTEST, target="response")


@needs_data
def test_original_release_formats(tmp_path: Path) -> None:
    """ToxicChat's CSV, BeaverTails' JSONL and a generic CSV, written from real rows, read like the shared files."""
    rows = _jsonl(TOXICCHAT)[:50]
    toxicchat_csv = tmp_path / "toxicchat.csv"
    with toxicchat_csv.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(
            f,
            [
                "conv_id",
                "user_input",
                "model_output",
                "human_annotation",
                "toxicity",
                "jailbreaking",
                "openai_moderation",
            ],
        )
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "conv_id": r["extra"]["conv_id"],
                    "user_input": r["text"],
                    "model_output": "ok",
                    "human_annotation": "True",
                    "toxicity": r["label"],
                    "jailbreaking": r["extra"]["jailbreaking"],
                    "openai_moderation": "[]",
                }
            )
    expected = load_dataset(TOXICCHAT)
    got = load_dataset(toxicchat_csv)
    assert got.prompts == expected.prompts[:50]
    assert [dict(r.labels) for r in got.records] == [dict(r.labels) for r in expected.records[:50]]

    bt_rows = _jsonl(BEAVERTAILS)[:40]
    bt_file = tmp_path / "beavertails.jsonl.gz"
    with gzip.open(bt_file, "wt", encoding="utf-8") as f:
        for r in bt_rows:
            original = {
                "prompt": r["text"],
                "response": r["response"],
                "category": r["extra"]["category"],
                "is_safe": not r["label"],
            }
            f.write(json.dumps(original) + "\n")
    got = load_dataset(bt_file)
    expected = load_dataset(BEAVERTAILS)
    assert got.responses == expected.responses[:40]
    assert [dict(r.labels) for r in got.records] == [dict(r.labels) for r in expected.records[:40]]

    generic = tmp_path / "generic.tsv"
    with generic.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["body", "toxic", "jb"])
        for r in rows:
            writer.writerow([r["text"], "yes" if r["label"] else "no", ""])
    got = load_dataset(generic, columns=Columns("body", ["toxic", "jb:jailbreak"]))
    assert got.prompts == [r["text"] for r in rows] and got.labels == ["unsafe"]
    assert [r.labels for r in got.records] == [{"unsafe": r["label"], "jailbreak": None} for r in rows]


def test_bad_input_errors(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("text,label\nhello,0\nkill,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'toxicity'.*columns are \['label', 'text'\]"):
        load_dataset(data, columns=Columns("text", ["toxicity"]))
    with pytest.raises(DataError, match="cannot tell the format"):
        load_dataset(data)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_dataset(empty)
    bad_value = tmp_path / "bad.csv"
    bad_value.write_text("text,label\nhello,0\nkill,maybe\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:3: column 'label' must be 0/1"):
        load_dataset(bad_value, columns=Columns("text", ["label"]))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 0, "label_target": "prompt"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: not valid JSON"):
        load_dataset(broken)
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="unknown file type"):
        load_dataset(parquet)


@needs_data
def test_split_sample_and_filter() -> None:
    ds = load_dataset(TOXICCHAT)
    train, dev = split_dataset(ds, 0.2, seed=0)
    train2, dev2 = split_dataset(ds, 0.2, seed=0)
    assert dev.prompts == dev2.prompts and train.prompts == train2.prompts
    assert len(train) + len(dev) == len(ds) and len(dev) == 560
    # stratified: the dev split keeps the file's share of toxic rows
    assert int(dev.targets(["unsafe"]).sum()) == round(384 * 0.2)
    assert {id(r) for r in train.records}.isdisjoint(id(r) for r in dev.records)
    assert split_dataset(ds, 0.2, seed=1)[1].prompts != dev.prompts
    assert sample(ds, 100, seed=3).prompts == sample(ds, 100, seed=3).prompts and len(sample(ds, 100, 3)) == 100
    safe = only_label(load_dataset(XSTEST), "unsafe", 0)
    assert len(safe) == 250


# ---------------------------------------------------------------------------------------------------------------
# metrics and input cutting


def test_metrics_match_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(5, 80))
        y = rng.integers(0, 2, n).astype(np.float32)
        y[0], y[1] = 0, 1
        scores = np.round(rng.random(n), 1 if trial % 2 else 6)  # coarse scores: many ties
        assert average_precision(y, scores) == pytest.approx(sklearn_metrics.average_precision_score(y, scores))
        assert roc_auc(y, scores) == pytest.approx(sklearn_metrics.roc_auc_score(y, scores))
        best = best_f1_threshold(y, scores)
        assert best is not None
        assert sklearn_metrics.f1_score(y, scores >= best[0]) == pytest.approx(best[1])
        precision, recall, _ = sklearn_metrics.precision_recall_curve(y, scores)
        assert best[1] == pytest.approx(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12)))
    # unknown labels (NaN) are left out; one class only gives no ranking metric
    m = label_metrics(np.array([1, 0, np.nan, 0], dtype=np.float32), np.array([0.9, 0.2, 0.99, 0.6]), 0.5)
    assert (m.n, m.n_pos, m.auprc, m.precision, m.recall, m.fpr) == (3, 1, 1.0, 0.5, 1.0, 0.5)
    assert label_metrics(np.zeros(3, dtype=np.float32), np.array([0.1, 0.7, 0.2]), 0.5).auprc is None
    # too few positives to place a threshold by
    assert best_f1_threshold(np.array([1, 0, 1, 0], dtype=np.float32), np.array([0.9, 0.1, 0.8, 0.2]), 3) is None


def test_flag_threshold_bounds_false_positives() -> None:
    rng = np.random.default_rng(0)
    for trial in range(50):
        # probabilities below 1 (a score of exactly 1.0 is flagged at any threshold); coarse ones tie a lot
        steps = 10 if trial % 2 else 1e6
        scores = np.floor(rng.random(int(rng.integers(1, 60))) * steps) / steps
        for k in range(len(scores) + 1):
            flagged = int(np.sum(scores >= flag_threshold(scores, k)))
            # at most k, and ties are never split: one more row would cross the tie above
            assert flagged <= k
            assert flagged == k or np.sum(scores >= np.sort(scores)[::-1][flagged]) > k
    assert flag_threshold(np.array([0.2, 0.9]), 0) == pytest.approx(0.95)
    assert flag_threshold(np.array([0.2, 0.9]), 1) == pytest.approx(0.55)


def test_calibrate_fpr_spends_the_budget_where_it_catches_harmful_rows() -> None:
    """A category that only re-flags what `unsafe` flags must not take half of the benign budget: the split
    between `unsafe` and the categories is the one that catches the most harmful rows within the target."""
    rng = np.random.default_rng(1)
    n_safe, n_harmful = 1000, 400
    unsafe = np.concatenate([rng.random(n_safe) * 0.9, 0.5 + rng.random(n_harmful) * 0.5])
    # the category fires on safe rows as often as `unsafe`, but its harmful rows are a subset of unsafe's top
    category = np.concatenate([rng.random(n_safe) * 0.9, np.where(unsafe[n_safe:] > 0.95, 0.99, 0.1)])
    records = [
        Record(f"t{i}", None, {"unsafe": int(i >= n_safe), "hate": int(i >= n_safe)}) for i in range(n_safe + n_harmful)
    ]
    dataset = Dataset("synthetic", records)
    probs = np.stack([unsafe, category], axis=1)
    evaluation = Evaluation(dataset, Scored(dataset, probs, 0.0), None, ["unsafe", "hate"])
    target = 0.05
    new, recall = calibrate_fpr([evaluation], ["unsafe", "hate"], np.array([0.5, 0.5], np.float32), target, 1)
    flagged = (probs >= np.array(new)[None, :]).any(axis=1)
    assert flagged[:n_safe].sum() <= int(target * n_safe)
    # all of the budget on `unsafe`: the best any split can do here
    alone = flag_threshold(unsafe[:n_safe], int(target * n_safe))
    assert flagged[n_safe:].sum() == (unsafe[n_safe:] >= alone).sum()
    assert recall["unsafe"] == pytest.approx(float(np.mean(unsafe[n_safe:] >= new[0])))


def test_keep_end_keeps_the_template_and_the_end_of_the_values() -> None:
    # [CLS] prompt-turn marker, the prompt, a marker, the response, [SEP]
    pieces = [([101, 7], False), ([1, 2, 3, 4], True), ([8], False), ([5, 6], True), ([102], False)]
    assert keep_end(pieces, 6) == [101, 7, 8, 5, 6, 102]
    assert keep_end(pieces, 7) == [101, 7, 4, 8, 5, 6, 102]
    assert keep_end(pieces, 10) == [101, 7, 1, 2, 3, 4, 8, 5, 6, 102]
    with pytest.raises(ValueError, match="template alone"):
        keep_end(pieces, 4)


# ---------------------------------------------------------------------------------------------------------------
# end to end


def _train(args: list[str]) -> None:
    assert train_main([*args, "-q"]) == 0


def _eval(args: list[str], out: Path) -> dict[str, Any]:
    assert eval_main([*args, "--json-out", str(out), "-q"]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def _check_report(report: dict[str, Any], labels: list[str]) -> None:
    assert report["labels"] == labels
    for d in report["datasets"]:
        assert set(d) >= DATASET_FIELDS and d["texts_per_s"] > 0
        for m in d["labels"].values():
            assert set(m) == LABEL_FIELDS


def _head(run: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(run / "checkpoint" / "head.safetensors"))["weight"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DATA.is_dir():
        pytest.skip(ABSENT)
    from tiny_models import MissingSource, build_tiny_model

    try:
        return build_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")
    except MissingSource as e:
        pytest.skip(str(e))


TINY_ARGS = [
    "--train",
    str(TOXICCHAT),
    "--limit",
    "200",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--max-length",
    "48",
    "--base-outtype",
    "f32",
    "--target",
    "prompt",
]


def test_training_imports_without_the_runtime() -> None:
    """loraguard-train needs torch, not the native runtime: a GPU machine without llama.cpp built (or with another
    llama-cpp-python) trains; only scoring (loraguard-eval) loads the extension."""
    probe = (
        "import sys\n"
        "import loraguard_train, loraguard_train.cli, loraguard_train.evaluate, loraguard_train.train\n"
        "print(sorted(m for m in sys.modules if m.startswith('loraguard_cpp')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['loraguard_cpp', 'loraguard_cpp.errors', 'loraguard_cpp.registry']"


@needs_data
def test_decoder_train_resume_eval(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    straight = tmp_path / "straight"
    _train(["--base", str(tiny_llama), "--out", str(straight), *TINY_ARGS, "--max-steps", "12"])
    record = json.loads((straight / "train.json").read_text(encoding="utf-8"))
    assert record["labels"] == ["unsafe", "jailbreaking"] and record["steps"] == 12
    # 160 training rows in batches of 16: epoch 1 is 10 steps and was evaluated on the dev split
    assert [h["epoch"] for h in record["history"]] == [1]
    assert record["fingerprint"].startswith("fnv1a64:") and (straight / "guard.gguf").is_file()

    # stopped mid-epoch, then resumed: the same weights as the run that never stopped (the base GGUF is given,
    # which also covers that path and saves converting it again)
    resumed = tmp_path / "resumed"
    given = ["--base", str(tiny_llama), "--base-gguf", str(straight / "base-f32.gguf"), "--out", str(resumed)]
    _train([*given, *TINY_ARGS, "--max-steps", "7"])
    # the resumed run writes its guard's LoRA tensors as F16: the same head, half the adapter bytes
    _train([*given, *TINY_ARGS, "--max-steps", "12", "--resume", "--guard-outtype", "f16"])
    assert not (resumed / "base-f32.gguf").exists()
    np.testing.assert_array_equal(_head(resumed), _head(straight))
    assert inspect_guard(straight / "guard.gguf")["lora"]["tensor_types"] == ["F32"]
    assert inspect_guard(resumed / "guard.gguf")["lora"]["tensor_types"] == ["F16"]
    assert json.loads((resumed / "train.json").read_text(encoding="utf-8"))["steps"] == 12

    # another training seed: the same rows and dev split, another run (init, dropout, batch order)
    reseeded = tmp_path / "reseeded"
    _train(["--base", str(tiny_llama), "--base-gguf", str(straight / "base-f32.gguf"), "--out", str(reseeded),
            *TINY_ARGS, "--max-steps", "12", "--train-seed", "1"])
    reseeded_record = json.loads((reseeded / "train.json").read_text(encoding="utf-8"))
    assert reseeded_record["dev_rows"] == record["dev_rows"]
    assert {n: d["unsafe"]["n_pos"] for n, d in reseeded_record["dev"].items()} == {
        n: d["unsafe"]["n_pos"] for n, d in record["dev"].items()
    }
    assert not np.allclose(_head(reseeded), _head(straight))

    # the guard cannot be written once training is done (no llama.cpp converter reachable, as on an offline GPU
    # machine): the error names the saved checkpoint and how to finish, and --resume writes the guard without
    # training again
    offline = tmp_path / "offline"
    offline_args = ["--base", str(tiny_llama), "--base-gguf", str(straight / "base-f32.gguf"), "--out", str(offline),
                    *TINY_ARGS, "--max-steps", "12", "-q"]
    monkeypatch.setenv("LORAGUARD_LLAMA_CPP_SRC", str(tmp_path / "no-llama-cpp"))
    capsys.readouterr()
    assert train_main(offline_args) == 2
    err = capsys.readouterr().err
    assert f"checkpoint is saved in {offline / 'checkpoint'}" in err and "--resume" in err, err
    assert not (offline / "guard.gguf").exists()
    monkeypatch.delenv("LORAGUARD_LLAMA_CPP_SRC")
    _train([*offline_args, "--resume"])
    assert (offline / "guard.gguf").is_file()
    assert json.loads((offline / "train.json").read_text(encoding="utf-8"))["steps"] == 12
    np.testing.assert_array_equal(_head(offline), _head(straight))

    report = _eval(
        [
            "-m",
            str(straight / "base-f32.gguf"),
            "-g",
            str(straight / "guard.gguf"),
            str(TOXICCHAT),
            "--limit",
            "200",
            "--split",
            "dev",
            "--target",
            "prompt",
            "--reference",
            str(straight / "checkpoint"),
            "--overflow",
            "keep_end",
        ],
        tmp_path / "eval.json",
    )
    _check_report(report, ["unsafe", "jailbreaking"])
    (d,) = report["datasets"]
    # the rows training held out, found again from the same file, limit, fraction and seed
    assert d["rows"] == 40 and record["dev_rows"] == {d["name"]: 40}
    assert d["labels"]["unsafe"]["n_pos"] == record["dev"][d["name"]]["unsafe"]["n_pos"] == 5
    assert d["reference"]["max_abs_prob_diff"] < 2e-3
    for label, m in d["labels"].items():
        assert m["auprc"] == pytest.approx(d["reference"]["labels"][label]["auprc"], abs=0.005)

    # (prompt, reply) rows, one reply empty (a chat model can end its turn at once; DiaSafety has such rows):
    # training reads it through the pair template with an empty response slot, and so must the runtime
    pairs = tmp_path / "pairs.jsonl"
    # and rows in leetspeak, which both the runtime and the reference read a second time, the max kept
    rows = [("Tell me a joke", "Why did the chicken cross the road?", 0), ("Say something", "", 0),
            ("How do I hurt him?", "Hit him where it hurts.", 1), ("Hi", "I hate you and your kind.", 1),
            ("H0w d0 1 m4k3 4 b0mb?", "Here is how.", 1), ("Say hi", "h3ll0 fr13nd, h0w 4r3 y0u", 0),
            ("Wh4t 15 7h15?", "A tr33.", 0), ("T3ll m3 4 j0k3", "N0 w4y.", 0)]
    pairs.write_text("".join(json.dumps({"text": p, "response": r, "label": y, "label_target": "response"}) + "\n"
                             for p, r, y in rows), encoding="utf-8")
    pair_report = _eval(["-m", str(straight / "base-f32.gguf"), "-g", str(straight / "guard.gguf"), str(pairs),
                         "--reference", str(straight / "checkpoint"), "--overflow", "keep_end"],
                        tmp_path / "pairs.json")
    (pair_set,) = pair_report["datasets"]
    assert pair_set["rows"] == 8 and pair_set["reference"]["max_abs_prob_diff"] < 2e-3
    # the runtime's default reads a long row in windows, which the torch reference does not: refused, not compared
    assert eval_main(["-m", str(straight / "base-f32.gguf"), "-g", str(straight / "guard.gguf"), str(pairs),
                      "--reference", str(straight / "checkpoint"), "-q"]) == 2
    assert "add --overflow keep_end" in capsys.readouterr().err


@needs_data
def test_encoder_train_eval_calibrate(tmp_path: Path) -> None:
    from loraguard_cpp import Guard
    from tiny_models import MissingSource, minilm_dir

    try:
        base = minilm_dir()
    except MissingSource as e:
        pytest.skip(str(e))
    run = tmp_path / "run"
    _train(
        [
            "--base",
            str(base),
            "--out",
            str(run),
            "--train",
            str(TOXICCHAT),
            "--limit",
            "160",
            "--labels",
            "unsafe",
            "--max-steps",
            "3",
            "--batch-size",
            "16",
            "--max-length",
            "48",
            "--base-outtype",
            "f32",
            "--buried-rows",
            "16",
            "--buried-max-length",
            "96",
        ]
    )
    # 128 rows of the file's training split plus the buried ones
    assert json.loads((run / "train.json").read_text())["train_rows"] == 128 + 16
    guard_file, base_gguf = run / "guard.gguf", run / "base-f32.gguf"
    before = GGUFReader(guard_file)
    kv_before = {k: f.contents() for k, f in before.fields.items() if not k.startswith("GGUF.")}
    tensors_before = {t.name: np.array(t.data) for t in before.tensors}
    del before

    args = ["-m", str(base_gguf), "-g", str(guard_file), str(TOXICCHAT), "--limit", "160", "--split", "dev"]
    # 32 dev rows hold a few positives: the default minimum refuses to calibrate on them and writes nothing
    assert eval_main([*args, "--calibrate", "-q"]) == 2
    report = _eval([*args, "--calibrate", "--min-positives", "1", "--plot", str(tmp_path / "pr.png")],
                   tmp_path / "eval.json")
    _check_report(report, ["unsafe"])
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    calibrated = report["thresholds"]["unsafe"]
    assert report["calibration"]["previous"] == {"unsafe": 0.5} and 0.0 < calibrated < 1.0
    with Guard(base_gguf, guard_file) as guard:
        assert guard.thresholds.tolist() == pytest.approx([calibrated])
    after = GGUFReader(guard_file)
    kv_after = {k: f.contents() for k, f in after.fields.items() if not k.startswith("GGUF.")}
    assert kv_after.pop("loraguard.thresholds") == pytest.approx([calibrated])
    kv_before.pop("loraguard.thresholds")
    assert kv_after == kv_before
    assert {t.name: np.array(t.data) for t in after.tensors}.keys() == tensors_before.keys()
    for t in after.tensors:
        np.testing.assert_array_equal(np.array(t.data), tensors_before[t.name])

    with pytest.raises(ConvertError, match="1 labels but 2 thresholds"):
        set_thresholds(guard_file, [0.5, 0.5])
    with pytest.raises(ConvertError, match=r"probabilities in \[0, 1\]"):
        set_thresholds(guard_file, [1.5])

    # XSTest's safe prompts: no positives, so only over-flagging is measured
    xs = _eval(["-m", str(base_gguf), "-g", str(guard_file), str(XSTEST)], tmp_path / "xs.json")["datasets"][0]
    assert xs["safe_rows"] == 250 and 0.0 <= xs["safe_flag_rate"] <= 1.0

    # the benign false-positive operating point: the written thresholds flag at most 10% of the safe dev rows,
    # and no fewer than the budget allows (one label, distinct scores: exactly floor(0.1 * safe rows))
    dev_args = ["-m", str(base_gguf), "-g", str(guard_file), str(OPENAI), "--split", "dev", "--limit", "1000"]
    fpr = _eval([*dev_args, "--calibrate", "fpr", "--target-fpr", "0.1"], tmp_path / "fpr.json")
    d = fpr["datasets"][0]
    assert fpr["calibration"]["mode"] == "fpr" and d["safe_rows"] > 100
    assert d["safe_flag_rate"] == pytest.approx(int(0.1 * d["safe_rows"]) / d["safe_rows"])
    rescored = _eval(dev_args, tmp_path / "rescored.json")["datasets"][0]
    assert rescored["safe_flag_rate"] == d["safe_flag_rate"] <= 0.1
    assert fpr["calibration"]["recall"]["unsafe"] == pytest.approx(rescored["unsafe_caught"])


@needs_data
def test_buried_rows_hide_one_prompt_among_safe_ones() -> None:
    from transformers import AutoTokenizer

    from loraguard_train.buried import CENTRE, buried_rows
    from tiny_models import MissingSource, minilm_dir

    try:
        tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    except MissingSource as e:
        pytest.skip(str(e))

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompts = load_dataset(OPENAI, target="prompt")
    pairs = load_dataset(BEAVERTAILS, target="pair")
    rows = buried_rows([prompts, pairs], 200, 160, count, seed=3)
    assert rows.records == buried_rows([prompts, pairs], 200, 160, count, seed=3).records
    assert rows.records != buried_rows([prompts, pairs], 200, 160, count, seed=4).records
    safe_longest_first = sorted({r.prompt for r in prompts.records if r.labels["unsafe"] == 0}, key=len, reverse=True)
    by_prompt = {r.prompt: r for r in prompts.records}
    assert [r.labels["unsafe"] for r in rows.records] == [1, 0] * 100
    for row in rows.records:
        centre = by_prompt[row.extra[CENTRE]]  # never a BeaverTails pair: only prompt-level rows are buried
        assert row.response is None and row.labels == centre.labels
        assert count(row.prompt) <= 160 and count(row.prompt) > count(centre.prompt)
        # the centre whole, somewhere, and nothing around it but safe prompts
        start = row.prompt.index(centre.prompt)
        around = [row.prompt[:start], row.prompt[start + len(centre.prompt) :]]
        for piece in safe_longest_first:
            around = [part.replace(piece, "") for part in around]
        assert not "".join(around).strip()
    positions = [row.prompt.index(row.extra[CENTRE]) for row in rows.records]
    assert 0 in positions and any(p > 0 for p in positions)

    with pytest.raises(DataError, match="safe and harmful prompt-level"):
        buried_rows([pairs], 10, 160, count, seed=0)
    with pytest.raises(DataError, match="raise buried_max_length"):
        buried_rows([prompts], 10, 20, count, seed=0)


@needs_data
def test_data_recipe_maps_categories_drops_and_weights(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "data.toml").write_text(
        f"""
[[train]]
path = "{DATA / 'convabuse_train.jsonl'}"
target = "prompt"
category_field = "types"
categories = {{ racist = "hate", sexist = "hate", intellectual = "harassment" }}

[[train]]
path = "{DATA / 'coconot_should_refuse.jsonl'}"
target = "prompt"
category_field = "subcategory"
drop = ["copyright violations", "incomprehensible"]
weight = 2.5
""",
        encoding="utf-8",
    )
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'base = "base"\nout = "out"\nlabels = ["unsafe", "hate", "harassment"]\nsafe_rows_negative = true\n'
        'data = "data.toml"\n',
        encoding="utf-8",
    )
    train_sets, dev_sets, labels = labelled_splits(build_config(read_recipe(recipe), tmp_path))
    assert labels == ["unsafe", "hate", "harassment"] and [len(ds) for ds in dev_sets] == [667, 72]
    abuse = [r for ds in (train_sets[0], dev_sets[0]) for r in ds.records]
    for r in abuse:
        types = set(r.extra["types"])
        if r.labels["unsafe"] == 0:  # safe rows are negatives of every category
            assert (r.labels["hate"], r.labels["harassment"]) == (0, 0)
        else:  # a harmful row: its own types, the other categories unknown
            assert r.labels.get("hate") == (1 if types & {"racist", "sexist"} else None)
            assert r.labels.get("harassment") == (1 if "intellectual" in types else None)
    raw = _jsonl(DATA / "convabuse_train.jsonl")
    racist_or_sexist = sum(row["label"] == 1 and bool({"racist", "sexist"} & set(row["extra"]["types"])) for row in raw)
    assert sum(r.labels.get("hate") == 1 for r in abuse) == racist_or_sexist > 100
    refuse = train_sets[1].records + dev_sets[1].records
    assert len(refuse) == 395 - 33 - 1 and train_sets[1].weight == dev_sets[1].weight == 2.5
    assert not {r.extra["subcategory"] for r in refuse} & {"copyright violations", "incomprehensible"}
    (tmp_path / "data.toml").write_text("epochs = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="only \\[\\[train\\]\\] and \\[\\[dev\\]\\] tables, not 'epochs'"):
        build_config(read_recipe(recipe), tmp_path)


@needs_data
@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml")))
def test_recipes_are_valid(recipe: Path) -> None:
    config = build_config(read_recipe(recipe), recipe.parent)
    for spec in config.train:
        assert spec.path.is_file(), spec.path
        spec.load(config.seed)


# ---------------------------------------------------------------------------------------------------------------
# user mistakes: one line, exit 2


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, pattern: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err


@needs_data
def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}", encoding="utf-8")
    common = ["--base", str(base), "--out", str(tmp_path / "out")]
    code = train_main([*common, "--train", str(TOXICCHAT), "--text-column", "text", "--label-column", "toxicity"])
    _one_line_error(capsys, code, r"no column 'toxicity'")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    _one_line_error(capsys, train_main([*common, "--train", str(empty)]), "the data set is empty")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('base = "base"\nout = "out"\nlearning_rate = 1\n', encoding="utf-8")
    _one_line_error(capsys, train_main(["--config", str(recipe)]), "unknown key 'learning_rate'")
    recipe.write_text('base = "base"\nout = "out"\nepochs = "3"\n[[train]]\npath = "x.jsonl"\n', encoding="utf-8")
    _one_line_error(capsys, train_main(["--config", str(recipe)]), "epochs must be int")
    recipe.write_text('base = "base"\nout = "out"\nguard_outtype = "q4_0"\n[[train]]\npath = "x.jsonl"\n')
    _one_line_error(capsys, train_main(["--config", str(recipe)]), "guard_outtype must be one of f32, f16, bf16, q8_0")
    _one_line_error(capsys, train_main([*common, "--train", str(TOXICCHAT), "--resume"]), "nothing to resume")
    _one_line_error(capsys, train_main(["--train", str(TOXICCHAT)]), "need a base model")
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--epochs", "x"])
    _one_line_error(capsys, int(exit_info.value.code or 0), "invalid int value")
    missing = tmp_path / "missing.gguf"
    code = eval_main(["-m", str(missing), "-g", str(missing), str(empty)])
    _one_line_error(capsys, code, "the data set is empty")


def test_cpu_trains_in_fp32() -> None:
    from loraguard_train.config import TrainConfig
    from loraguard_train.train import _amp_dtype

    assert _amp_dtype(TrainConfig(base=".", out=Path("."), train=[]), torch.device("cpu")) is None


def test_gguf_base_of_a_type_transformers_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gguf import GGUFWriter

    base = tmp_path / "f64.gguf"
    writer = GGUFWriter(base, "llama")
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(8, dtype=np.float64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code = train_main(["--base", str(base), "--out", str(tmp_path / "out"), "--train", str(TOXICCHAT)])
    _one_line_error(capsys, code, r"tensor blk\.0\.attn_norm\.weight is of type F64, which transformers cannot")


@needs_data
def test_named_gguf_base_trains_converts_and_runs_natively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--base smollm2`: the real chat model's GGUF, prepared as the named guard runs it, dequantized by
    transformers for a few training steps; the guard it writes runs natively on that same file."""
    from loraguard_cpp import registry

    try:
        registry.BASES["smollm2"].package_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    monkeypatch.setenv("LORAGUARD_MODELS", str(tmp_path / "models"))
    out = tmp_path / "run"
    template = "<|im_start|>user\n{prompt}<|im_end|>"
    _train(["--base", "smollm2", "--out", str(out), "--train", str(TOXICCHAT), "--target", "prompt", "--limit", "60",
            "--batch-size", "4", "--max-length", "32", "--max-steps", "3", "--template-prompt", template,
            "--parse-special"])
    record = json.loads((out / "train.json").read_text(encoding="utf-8"))
    prepared = registry.BASES["smollm2"].cached_path()
    assert Path(record["base_gguf"]) == prepared and prepared.parent == tmp_path / "models"
    report = _eval(["-m", "smollm2", "-g", str(out / "guard.gguf"), str(TOXICCHAT), "--limit", "60", "--split", "dev",
                    "--target", "prompt", "--reference", str(out / "checkpoint"), "--overflow", "keep_end"],
                   tmp_path / "eval.json")
    (d,) = report["datasets"]
    assert d["rows"] == 12
    # the F16 base: llama.cpp rounds activations to F16 in its matmuls (~1e-3 relative)
    assert d["reference"]["max_abs_prob_diff"] < 0.02

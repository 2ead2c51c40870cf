"""Spark: the predict function predict_batch_udf runs on each Python worker (without a JVM), and 2,000 real rows
scored in local mode by 2 workers, every row once, in order, with the scores of one process (where Java is)."""

from __future__ import annotations

import inspect
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from loraguard_cpp.batch import FLAGGED_COLUMN, GuardScorer
from loraguard_cpp.integrations.spark import make_predict_fn
from moderation_corpus import HARMFUL_RESPONSE, PROMPT, corpus_reference, moderation_corpus

N_ROWS = 2000


def test_predict_fn_returns_the_scorer_columns_for_spark() -> None:
    rows = moderation_corpus(24)
    texts = np.array([r["text"] for r in rows], dtype=object)
    responses = np.array([r["response"] for r in rows], dtype=object)
    pair_predict = make_predict_fn(None, "minilm", with_response=True)
    prompt_predict = make_predict_fn(None, "minilm", with_response=False)
    # predict_batch_udf hands the predict function as many columns as it has parameters.
    assert len(inspect.signature(pair_predict).parameters) == 2
    assert len(inspect.signature(prompt_predict).parameters) == 1
    with GuardScorer(None, "minilm", response_column="response") as scorer:
        expected = scorer.columns(texts.tolist(), responses.tolist())
        expected_prompts = scorer.columns(texts.tolist())
    for got, want in ((pair_predict(texts, responses), expected), (prompt_predict(texts), expected_prompts)):
        assert list(got) == list(want)
        assert got[FLAGGED_COLUMN].dtype == np.int8
        np.testing.assert_array_equal(got[FLAGGED_COLUMN], want[FLAGGED_COLUMN].astype(np.int8))
        for name in scorer.score_columns:
            np.testing.assert_allclose(got[name], want[name], atol=1e-6)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime (apt-get install openjdk-17-jre-headless); none is on PATH")
    pytest.importorskip("pyspark", reason="Spark is an optional extra: pip install 'loraguard[spark]'")
    from pyspark.sql import SparkSession

    # Python workers run this interpreter (the venv's), not the first python3 on PATH.
    saved = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("loraguard-test")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if saved is None:
        os.environ.pop("PYSPARK_PYTHON")
    else:
        os.environ["PYSPARK_PYTHON"] = saved


def test_local_spark_scores_2000_rows_once_in_order(spark: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    from loraguard_cpp.integrations.spark import moderate

    rows = moderation_corpus(N_ROWS)
    reference = corpus_reference()
    frame = spark.createDataFrame(pd.DataFrame(rows))
    assert frame.rdd.getNumPartitions() == 2, "two tasks, one per Python worker"
    scored = moderate(frame, text_column="text", response_column="response", batch_size=100)
    scored.explain()
    assert capsys.readouterr().out.count("ArrowEvalPython") == 1, "the UDF runs once per row, not once per field"
    result = scored.toPandas()
    reference.check(result, N_ROWS)
    assert result["text"].tolist() == [r["text"] for r in rows]
    assert result[FLAGGED_COLUMN].dtype == bool


def test_local_spark_reads_the_response_column_by_default(spark: Any) -> None:
    from loraguard_cpp.integrations.spark import moderate

    frame = spark.createDataFrame([(PROMPT, None), (PROMPT, HARMFUL_RESPONSE)], "text string, response string")
    flagged = [row[FLAGGED_COLUMN] for row in moderate(frame).collect()]
    assert flagged == [False, True], "a response column is scored unless another is named"

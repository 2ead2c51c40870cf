"""Spark: score a DataFrame through ``pyspark.ml.functions.predict_batch_udf`` with a
:class:`~loraguard_cpp.batch.GuardScorer` per Python worker.

>>> from loraguard_cpp.integrations.spark import moderate
>>> scored = moderate(spark.read.parquet("chats/"), text_column="text")
>>> scored.write.parquet("scored/")

Spark starts one Python worker per task slot; each loads the Guard once (Spark's model cache) and scores
``batch_size`` rows per call. Rows gain ``score_<label>`` columns and ``flagged``, as with Ray and
``loraguard-cli classify --input``. ``pip install 'loraguard[spark]'`` (and a Java runtime, as for any Spark).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..batch import FLAGGED_COLUMN, GuardScorer, response_column_of, score_column
from ..guard import Guard

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

_VERDICT = "_loraguard_verdict"
Predict = Callable[..., dict[str, npt.NDArray[Any]]]


def make_predict_fn(
    model: str | os.PathLike[str] | None,
    guard: str | os.PathLike[str] | None,
    *,
    with_response: bool,
    n_threads: int = 1,
    **guard_options: Any,
) -> Predict:
    """What ``predict_batch_udf`` calls once per Python worker: loads a scorer and returns its predict function,
    which takes the text column (and the response column) as numpy arrays and returns the new columns."""
    scorer = GuardScorer(model, guard, n_threads=n_threads, **guard_options)

    def spark_columns(texts: npt.NDArray[Any], responses: npt.NDArray[Any] | None = None) -> dict[str, Any]:
        columns = scorer.columns(texts.tolist(), None if responses is None else responses.tolist())
        # predict_batch_udf's struct fields take numbers and strings, not booleans: flagged travels as 0/1.
        columns[FLAGGED_COLUMN] = columns[FLAGGED_COLUMN].astype(np.int8)
        return columns

    # predict_batch_udf counts the predict function's parameters to decide how many columns it is given.
    if with_response:
        return lambda texts, responses: spark_columns(texts, responses)
    return lambda texts: spark_columns(texts)


def verdict_type(labels: list[str]) -> StructType:
    """The struct the UDF returns: a float per label's score and ``flagged`` as a 0/1 byte."""
    from pyspark.sql.types import ByteType, FloatType, StructField, StructType

    fields = [StructField(score_column(label), FloatType()) for label in labels]
    return StructType([*fields, StructField(FLAGGED_COLUMN, ByteType())])


def moderate(
    frame: DataFrame,
    model: str | os.PathLike[str] | None = None,
    guard: str | os.PathLike[str] | None = None,
    *,
    text_column: str = "text",
    response_column: str | None = None,
    n_threads: int = 1,
    batch_size: int = 64,
    **guard_options: Any,
) -> DataFrame:
    """The frame with ``score_<label>`` (float) and ``flagged`` (boolean) columns added.

    The driver loads the guard once to read its labels (the output schema); executors load it again, so every
    node needs the files (named guards prepare their base themselves). ``response_column`` defaults to the
    frame's ``"response"`` column where it has one, as for :class:`~loraguard_cpp.batch.GuardScorer`."""
    from functools import partial

    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F

    response_column = response_column_of(response_column, frame.columns)
    with Guard(model, guard, n_threads=1, **guard_options) as loaded:
        labels = list(loaded.labels)
    udf = predict_batch_udf(
        partial(make_predict_fn, model, guard, with_response=response_column is not None, n_threads=n_threads,
                **guard_options),
        return_type=verdict_type(labels),
        batch_size=batch_size,
    )
    # Non-deterministic, so that the optimizer does not copy the UDF into each field that is read out of its
    # struct: every row is scored exactly once.
    udf = udf.asNondeterministic()
    inputs = [text_column] if response_column is None else [text_column, response_column]
    scored = frame.withColumn(_VERDICT, udf(*inputs))
    new_columns = [F.col(f"{_VERDICT}.{score_column(label)}").alias(score_column(label)) for label in labels]
    flagged = (F.col(f"{_VERDICT}.{FLAGGED_COLUMN}") == 1).alias(FLAGGED_COLUMN)
    kept = [F.col(f"`{name}`") for name in frame.columns if name not in {*map(score_column, labels), FLAGGED_COLUMN}]
    return scored.select(*kept, *new_columns, flagged)

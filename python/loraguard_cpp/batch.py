"""Moderate tables: :class:`GuardScorer` maps a batch of rows to the same rows plus one score column per label
and a ``flagged`` column, with the Guard loaded once per worker.

It is the callable data engines expect (Ray Data's ``map_batches`` with a class, Spark's ``predict_batch_udf``
through :mod:`loraguard_cpp.integrations.spark`) and what ``loraguard-cli classify --input`` runs in each
worker process. A batch is a dict of numpy arrays (Ray's ``"numpy"`` format), a pandas DataFrame or a pyarrow
Table; the result has the same type.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from .errors import InvalidInputError
from .guard import Guard

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

SCORE_PREFIX = "score_"
FLAGGED_COLUMN = "flagged"
RESPONSE_COLUMN = "response"

Batch = TypeVar("Batch", "dict[str, npt.NDArray[Any]]", "pd.DataFrame", "pa.Table")


def score_column(label: str) -> str:
    """The output column holding ``label``'s probability."""
    return SCORE_PREFIX + label


def response_column_of(named: str | None, columns: Sequence[str]) -> str | None:
    """The column holding each row's response: the one named, else the ``"response"`` column where there is one,
    so that no response in the data is left unread (GuardScorer, ``classify --input`` and Spark alike)."""
    if named is None and RESPONSE_COLUMN in columns:
        return RESPONSE_COLUMN
    return named


def _is_missing(value: object) -> bool:
    """None, a NaN (numpy's floats included) or pandas' NA: a missing value in every batch format."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return True
    pandas = sys.modules.get("pandas")  # a pd.NA exists only where pandas is imported
    return pandas is not None and value is pandas.NA


class GuardScorer:
    """Loads a :class:`~loraguard_cpp.Guard` once and scores batches of rows with it.

    ``model``/``guard`` and ``guard_options`` are :class:`~loraguard_cpp.Guard`'s. ``n_threads`` is per scorer:
    on a node, several one-thread scorers (one per core) usually beat one scorer using every core for a small
    model, because a batch's decode does not keep many threads busy. ``response_column`` holds the response to
    each row's prompt (default: the batch's ``"response"`` column where it has one, so that no response is left
    unread); a missing value (None, NaN, pandas' NA) scores the prompt alone.

    An error about one row names it by its index from 0: within the batch, or, where the caller passes
    ``first_row`` (the index of the batch's first row in the whole data), within the whole data.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        guard: str | os.PathLike[str] | None = None,
        *,
        text_column: str = "text",
        response_column: str | None = None,
        n_threads: int = 1,
        **guard_options: Any,
    ) -> None:
        self.text_column = text_column
        self.response_column = response_column
        self.guard = Guard(model, guard, n_threads=n_threads, **guard_options)
        self.labels: list[str] = list(self.guard.labels)
        self.score_columns: list[str] = [score_column(label) for label in self.labels]

    # -- scoring --------------------------------------------------------------------------------------------

    def score(
        self, texts: Sequence[object], responses: Sequence[object] | None = None, *, first_row: int = 0
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """(probabilities of shape (N, n_labels), flagged of shape (N,)) for N rows, in one batched decode.

        Flags come from :meth:`Guard.classify_many`, the rule every caller of the package shares."""
        prompts = self._texts(texts, first_row)
        answers = self._responses(responses, len(prompts), first_row)
        if not prompts:
            return np.zeros((0, len(self.labels)), dtype=np.float32), np.zeros(0, dtype=np.bool_)
        try:
            verdicts = self.guard.classify_many(prompts, answers)
        except InvalidInputError as e:
            raise self._refused_row(prompts, answers, e, first_row) from e
        scores = np.array([[v.scores[label] for label in self.labels] for v in verdicts], dtype=np.float32)
        return scores, np.array([v.flagged for v in verdicts], dtype=np.bool_)

    def columns(
        self, texts: Sequence[object], responses: Sequence[object] | None = None, *, first_row: int = 0
    ) -> dict[str, npt.NDArray[Any]]:
        """The columns a batch gains: ``score_<label>`` (float32) for each label and ``flagged`` (bool)."""
        scores, flagged = self.score(texts, responses, first_row=first_row)
        out: dict[str, npt.NDArray[Any]] = {name: scores[:, i] for i, name in enumerate(self.score_columns)}
        out[FLAGGED_COLUMN] = flagged
        return out

    def __call__(self, batch: Batch, *, first_row: int = 0) -> Batch:
        """The batch with the score and ``flagged`` columns added (replaced, if it had them)."""
        if _is_arrow_table(batch):
            return self._score_arrow(batch, first_row)
        if _is_pandas_frame(batch):
            return self._score_pandas(batch, first_row)
        if isinstance(batch, Mapping):
            return self._score_mapping(batch, first_row)  # type: ignore[return-value]
        raise InvalidInputError(f"GuardScorer takes a dict of numpy arrays, a pandas DataFrame or a pyarrow Table, "
                                f"not {type(batch).__name__}")

    def _score_mapping(self, batch: Mapping[str, Any], first_row: int) -> dict[str, npt.NDArray[Any]]:
        texts = self._column(batch, self.text_column, list(batch))
        response_column = response_column_of(self.response_column, list(batch))
        responses = None if response_column is None else self._column(batch, response_column, list(batch))
        added = self.columns(texts, responses, first_row=first_row)
        return {**{name: np.asarray(values) for name, values in batch.items()}, **added}

    def _score_pandas(self, frame: pd.DataFrame, first_row: int) -> pd.DataFrame:
        names = [str(c) for c in frame.columns]
        texts = self._column(frame, self.text_column, names).tolist()
        response_column = response_column_of(self.response_column, names)
        responses = None if response_column is None else self._column(frame, response_column, names).tolist()
        return frame.assign(**self.columns(texts, responses, first_row=first_row))

    def _score_arrow(self, table: pa.Table, first_row: int) -> pa.Table:
        import pyarrow as pa

        names = list(table.column_names)
        texts = self._column(table, self.text_column, names).to_pylist()
        response_column = response_column_of(self.response_column, names)
        responses = None if response_column is None else self._column(table, response_column, names).to_pylist()
        for name, values in self.columns(texts, responses, first_row=first_row).items():
            column = pa.array(values)
            if name in names:
                table = table.set_column(names.index(name), name, column)
            else:
                table = table.append_column(name, column)
        return table

    def _refused_row(self, prompts: list[str], answers: list[str | None] | None, error: InvalidInputError,
                     first_row: int) -> InvalidInputError:
        """The error of a batch the guard refused, naming its first refused row (searched for only on failure)."""
        for i, prompt in enumerate(prompts):
            try:
                self.guard.tokenize(prompt, None if answers is None else answers[i])
            except InvalidInputError as e:
                return InvalidInputError(f"row {first_row + i}: {e}")
        return error

    def _column(self, batch: Any, name: str, names: list[str]) -> Any:
        if name not in names:
            raise InvalidInputError(f"the batch has no column {name!r} (columns: {names}): name the text column "
                                    "with text_column= (and the response column with response_column=)")
        return batch[name]

    def _texts(self, texts: Sequence[object], first_row: int) -> list[str]:
        out = []
        for i, text in enumerate(texts, first_row):
            if not isinstance(text, str):
                raise InvalidInputError(
                    f"row {i} of column {self.text_column!r} is {type(text).__name__}, not text: "
                    "drop or fill rows without text before scoring"
                )
            out.append(text)
        return out

    def _responses(self, responses: Sequence[object] | None, n: int, first_row: int) -> list[str | None] | None:
        if responses is None:
            return None
        out: list[str | None] = []
        for i, response in enumerate(responses, first_row):
            if _is_missing(response):
                out.append(None)
            elif isinstance(response, str):
                out.append(response)
            else:
                raise InvalidInputError(
                    f"row {i} of column {self.response_column or RESPONSE_COLUMN!r} is {type(response).__name__}, "
                    "not text or missing"
                )
        if len(out) != n:
            raise InvalidInputError(f"{n} texts but {len(out)} responses")
        return out if any(r is not None for r in out) else None

    # -- lifetime -------------------------------------------------------------------------------------------

    def close(self) -> None:
        self.guard.close()

    def __enter__(self) -> GuardScorer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _is_arrow_table(batch: object) -> bool:
    # Checked by module name so that neither pyarrow nor pandas is imported unless the batch is one of theirs.
    return type(batch).__module__.startswith("pyarrow") and hasattr(batch, "append_column")


def _is_pandas_frame(batch: object) -> bool:
    return type(batch).__module__.startswith("pandas") and hasattr(batch, "assign")

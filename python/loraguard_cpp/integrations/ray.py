"""Ray Data: score a Dataset with a pool of :class:`~loraguard_cpp.batch.GuardScorer` actors.

>>> import ray
>>> from loraguard_cpp.integrations.ray import moderate
>>> scored = moderate(ray.data.read_parquet("chats/"), concurrency=8, text_column="text")
>>> scored.write_parquet("scored/")

Each actor loads the Guard once and scores ``batch_size`` rows per call; rows gain ``score_<label>`` columns
and ``flagged``. A killed actor is restarted and its batch retried (Ray Data's defaults for actor pools), so no
row is lost or scored twice. ``pip install 'loraguard[ray]'``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..batch import GuardScorer

if TYPE_CHECKING:
    import ray.data


def moderate(
    dataset: ray.data.Dataset,
    model: str | os.PathLike[str] | None = None,
    guard: str | os.PathLike[str] | None = None,
    *,
    text_column: str = "text",
    response_column: str | None = None,
    concurrency: int = 1,
    n_threads: int = 1,
    batch_size: int = 64,
    num_cpus: float | None = None,
    preserve_order: bool = True,
    **guard_options: Any,
) -> ray.data.Dataset:
    """The dataset with its rows scored by ``concurrency`` actors of ``n_threads`` threads each.

    Each actor reserves ``num_cpus`` (default ``n_threads``). Actors hold their CPUs for the whole run, so
    when they would take every CPU of the cluster, reserve less (e.g. 0.5): the tasks that read the input need
    CPUs too, and Ray waits for them forever otherwise. ``preserve_order`` keeps the input's row order in the
    output (set on the dataset's own DataContext); turn it off to let fast blocks overtake slow ones.
    ``model``, ``guard`` and ``guard_options`` are :class:`~loraguard_cpp.Guard`'s; every node needs the files
    (named guards prepare their base themselves)."""
    from ray.data import ActorPoolStrategy

    if preserve_order:
        dataset.context.execution_options.preserve_order = True
    return dataset.map_batches(
        GuardScorer,
        fn_constructor_kwargs={"model": model, "guard": guard, "text_column": text_column,
                               "response_column": response_column, "n_threads": n_threads, **guard_options},
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=concurrency),
        num_cpus=n_threads if num_cpus is None else num_cpus,
    )

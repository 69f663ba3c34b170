"""Ray's stock OptunaSearch feedback, for comparison with kdsearch's searcher (benchmarks only).

``StockFeedbackOptunaSearch`` is ``kdsearch.search.sampler.FidelityAwareOptunaSearch`` (the
same space, sampler, warm start and study) with Ray's own ``on_trial_result`` and
``on_trial_complete``: a trial a scheduler stopped early reaches Optuna as COMPLETE with its
last value, as with ``ray.tune.search.optuna.OptunaSearch``. Build it with
``make_searcher(search, max_t, kind=StockFeedbackOptunaSearch)`` (:func:`stock_searcher`),
or have ``run_search`` build it (:func:`searchers_of_run_search`). The benchmarks name it
``optuna+asha`` (with ASHA).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from kdsearch.config import Search
from kdsearch.search.sampler import FidelityAwareOptunaSearch, make_searcher


class StockFeedbackOptunaSearch(FidelityAwareOptunaSearch):
    """Ray's own feedback: a trial a scheduler stopped reaches Optuna as COMPLETE with its
    last value. Only for comparison."""

    on_trial_result = OptunaSearch.on_trial_result  # type: ignore[assignment]
    on_trial_complete = OptunaSearch.on_trial_complete  # type: ignore[assignment]


def stock_searcher(search: Search, max_t: int, **kwargs: Any) -> FidelityAwareOptunaSearch:
    """``make_searcher`` with Ray's stock feedback."""
    return make_searcher(search, max_t, kind=StockFeedbackOptunaSearch, **kwargs)


@contextmanager
def searchers_of_run_search(kind: type[FidelityAwareOptunaSearch] = StockFeedbackOptunaSearch
                            ) -> Iterator[list[FidelityAwareOptunaSearch]]:
    """Within the block, the searches ``kdsearch.search.driver.run_search`` starts use a
    searcher of ``kind``; yields the list of the searchers built, for their studies.

    ``run_search`` has no parameter for the searcher's kind, so the name that
    ``kdsearch.search.tuner`` calls, ``make_searcher``, is wrapped for the block's duration
    with ``kind`` set (the searcher lives in the driver: trial processes never see it).
    """
    from kdsearch.search import tuner

    original = tuner.make_searcher
    built: list[FidelityAwareOptunaSearch] = []

    def make(*args: Any, **kwargs: Any) -> FidelityAwareOptunaSearch:
        searcher = original(*args, **{**kwargs, "kind": kind})
        built.append(searcher)
        return searcher

    tuner.make_searcher = make
    try:
        yield built
    finally:
        tuner.make_searcher = original

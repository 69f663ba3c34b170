"""MLflow: the schema of what a search records (tags, statuses, queries, the one ranking of
trials), the parent run, the per-trial callback, the report and the published model.

May import: :mod:`kdsearch.config`, :mod:`kdsearch.storage`, :mod:`kdsearch.search.space` (the
Optuna view of the space, for the report); torch only in ``publish`` and Ray only in
``callback``. ``schema`` and ``report`` import neither torch nor Ray.
"""

"""The search: the Optuna view of the space (``space``, no Ray), the fidelity-aware searcher,
schedulers and the Tuner, the one Ray adapter of a trial, the teacher stage as a Ray task,
resume records, the progress line and the driver that runs it all.

May import: :mod:`kdsearch.config`, :mod:`kdsearch.data`, :mod:`kdsearch.train`,
:mod:`kdsearch.track`, :mod:`kdsearch.storage`.
"""

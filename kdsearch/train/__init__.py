"""Training: the KD loss, metrics, the one training loop, one trial without Ray, the teacher
stage and the clip and teacher-logit cache.

May import: :mod:`kdsearch.config`, :mod:`kdsearch.data`, :mod:`kdsearch.models`,
:mod:`kdsearch.storage`. Never Ray or MLflow: a configuration trains (and profiles) alone.
"""

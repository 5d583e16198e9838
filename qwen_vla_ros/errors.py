"""The base of the package's own errors.

Every domain error (bad config, a camera that cannot be opened, an unusable export, a trial
that cannot start) derives from :class:`QwenVlaError` as well as from the builtin it has
always been (``ValueError``, ``RuntimeError``, ``ImportError``), so callers that catch the
builtin keep working while new code can catch "input we judged bad" without also catching
programming errors.
"""
from __future__ import annotations


class QwenVlaError(Exception):
    """Something qwen_vla_ros judged wrong with its input or environment; the message says what and where."""

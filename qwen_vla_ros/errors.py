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


class MalformedMessageError(QwenVlaError, ValueError):
    """A message or request received at run time (joint state, odometry, Joy, chunk, committed
    trajectory, image, driver command, service request) whose content cannot be used.

    The receiving node logs it, counts it, keeps the robot safe and keeps running. A
    ``ValueError`` as well, for callers that caught the bare ``ValueError``/``KeyError`` these
    sites raised before (``nodes/controller.py``, ``nodes/sim_node.py``).
    """


class InvalidArgumentError(QwenVlaError, ValueError):
    """A command-line option, node parameter or service argument given by a person (not a config
    file: that is ``config.ConfigError``) that cannot be used; the CLI exits 2 with the message.
    Also a model option (backend, device, dtype, provider, TensorRT limits) handed to the model
    loader, whichever of the command line or the runtime config chose it."""


class PolicyInputError(QwenVlaError, ValueError):
    """An observation handed to the policy (state, camera images, committed actions, delay)
    that it cannot use: wrong shape or dtype, not finite, a camera missing or extra.

    The inference runner skips that step and retries, as it does for a torch failure; a bug in
    the model code raises something else and reaches the runner's loop with its traceback.
    """


class DatasetError(QwenVlaError, ValueError):
    """A dataset on disk that cannot be read as what it claims to be (a LeRobot v3.0 export whose
    version, videos or action chunks do not fit), named with the file or feature at fault."""

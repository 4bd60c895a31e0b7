"""Where steps run: locally by default, on AWS Batch when `EN_BATCH=1`, with no change to the flow."""

from __future__ import annotations

from collections.abc import Callable


def enable_decorator(decorator: Callable, flag: bool) -> Callable:
    """Apply a Metaflow step decorator (e.g. `batch(gpu=1)`) only when `flag` is on."""

    def apply(function: Callable) -> Callable:
        return decorator(function) if flag else function

    return apply

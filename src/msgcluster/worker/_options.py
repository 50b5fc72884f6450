"""The Worker's settings, checked when it is built (ConfigurationError), with
the ranges SQS allows where SQS has one."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .._errors import ConfigurationError

__all__ = ["WorkerOptions", "check_options"]

Seconds = Annotated[float, msgspec.Meta(ge=0)]


class WorkerOptions(msgspec.Struct, kw_only=True, frozen=True):
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=10_000)]
    receivers: Annotated[int, msgspec.Meta(ge=1, le=100)] | None
    prefetch: Annotated[int, msgspec.Meta(ge=0, le=10_000)] | None
    wait_seconds: Annotated[float, msgspec.Meta(ge=0, le=20)]
    visibility_timeout: Annotated[float, msgspec.Meta(ge=1, le=43_200)]
    max_extension: Annotated[float, msgspec.Meta(ge=0, le=43_200)]
    backoff_base: Seconds
    backoff_max: Annotated[float, msgspec.Meta(ge=0, le=43_200)]
    grace_seconds: Seconds
    progress_seconds: Seconds


def check_options(**values: object) -> WorkerOptions:
    """The options as a WorkerOptions, or ConfigurationError naming the bad one."""
    try:
        # strict=False: a whole number given for seconds is fine (10 -> 10.0).
        return msgspec.convert(values, WorkerOptions, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"invalid Worker option: {exc}") from None

"""Checks of the worker's and handlers' settings: integers that are real
ints, seconds that are finite numbers in range, flags that are bools.

Each failure is one-line ConfigurationError naming the setting and what it
takes; a bad value is shown only when it is a number (anything else may be
something pasted by mistake, a secret included), else by its type.
"""

from __future__ import annotations

import math

from .._errors import ConfigurationError

__all__ = ["flag", "got", "integer", "seconds"]


def got(value: object) -> str:
    """``value`` as an error shows it: a number as is, anything else by its type."""
    if isinstance(value, bool | int | float):
        return repr(value)
    return f"a {type(value).__name__}"


def integer(what: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool, str or float) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(
            f"{what} must be an integer from {low:,} to {high:,}, got {got(value)}"
        )
    return value


def seconds(what: str, value: object, low: float, high: float, *, above: bool = False) -> float:
    """``value`` as float seconds if it is a finite int or float from ``low`` (or,
    ``above``, over ``low``) to ``high``."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if (
        number is None
        or not math.isfinite(number)
        or not (low < number if above else low <= number)
        or number > high
    ):
        bound = f"over {low:g} and up to" if above else f"from {low:g} to"
        raise ConfigurationError(
            f"{what} must be a finite number of seconds {bound} {high:,g}, got {got(value)}"
        )
    return float(number)


def flag(what: str, value: object) -> bool:
    """``value`` if it is True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{what} must be True or False, got {got(value)}")
    return value

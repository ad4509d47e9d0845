"""Argument types of the command lines (`ghetl` and `python -m ghetl.sandbox`).

Each raises `ArgumentTypeError` with a sentence, which argparse prints as it is
("argument --port: must be 0 to 65535, got 99999"); a plain ValueError would make it print
the function's name instead ("invalid positive_int value").
"""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def port(text: str) -> int:
    """0 to 65535; 0 asks the system for any free port."""
    value = _whole_number(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535 (0 = any free port), got {value}")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def days(text: str) -> float:
    """A number of days, 0 or more (0: no age protects anything)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of days, 0 or more, got {text!r}")
    return value

"""Sizes and their text forms (`1M`, `4096`, `8MiB`)."""

from __future__ import annotations

from leasestore.errors import UsageError

KiB = 1024
MiB = 1024 * KiB

_SUFFIXES = {"": 1, "K": KiB, "KB": KiB, "KIB": KiB, "M": MiB, "MB": MiB, "MIB": MiB}


def is_decimal(text: str) -> bool:
    """Whether `text` is a non-negative integer in ASCII digits (str.isdigit alone also takes
    '٣' and '²', which int() then reads as 3 or refuses)."""
    return text.isascii() and text.isdigit()


def decimal_int(text: str) -> int:
    """An argparse type: a non-negative integer in ASCII digits (so '٣' and '0x10' are usage
    errors, not 3 or a traceback)."""
    if not is_decimal(text.strip()):
        raise ValueError(text)
    return int(text)


def decimal_float(text: str) -> float:
    """An argparse type: a non-negative decimal number in ASCII (no 'nan', 'inf' or '1e3')."""
    whole, _, fraction = text.strip().partition(".")
    if not (is_decimal(whole) and (not fraction or is_decimal(fraction))):
        raise ValueError(text)
    return float(text)


def checked_whole(value: object, what: str, low: int, high: int, unit: str = "") -> int:
    """`value` if it is an int (not a bool) in low..high, else UsageError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{what} must be a whole number{unit} in {low}..{high}, not {value!r}")
    return value


def parse_size(text: str) -> int:
    """Bytes named by `text`: a decimal integer with an optional K/M suffix (binary units)."""
    stripped = text.strip().upper()
    digits = stripped.rstrip("KMIB")
    suffix = stripped[len(digits):]
    if not is_decimal(digits) or suffix not in _SUFFIXES:
        raise UsageError(f"not a size: {text!r} (expected e.g. 512, 4096, 1M, 8M)")
    return int(digits) * _SUFFIXES[suffix]


def format_size(size_b: int) -> str:
    """The shortest exact text for `size_b` (`1M`, `4K`, `1000`)."""
    for unit, name in ((MiB, "M"), (KiB, "K")):
        if size_b and size_b % unit == 0:
            return f"{size_b // unit}{name}"
    return str(size_b)

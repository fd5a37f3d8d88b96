"""How long work reports progress and is cancelled, one convention for every stage (registration, skull stripping,
inference, batch): progress(fraction done, message) and should_cancel() -> bool."""

from typing import Callable, Optional

Progress = Callable[[float, str], None]
ShouldCancel = Optional[Callable[[], bool]]


def share(progress: Progress, start: float, end: float, label: Optional[str] = None) -> Progress:
    """Progress callback mapping [0, 1] of a part of the work onto [start, end] of the whole."""
    def report(fraction, message):
        progress(start + (end - start) * fraction, f"{message} ({label})" if label else message)
    return report

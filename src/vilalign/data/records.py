"""Records a reader cannot use, under one policy: ``data.on_bad_record``.

``error`` (the default): the first bad record stops the run with a :class:`DataFormatError`
naming the file, the line or the field. ``skip``: the record is dropped, counted and
reported (a warning at loading, and ``loading_report()["bad_records"]`` stored with the
run). A reader calls :meth:`BadRecords.reject` for a record it cannot use, or builds each
record through :meth:`BadRecords.attempt`, which turns a ``DataFormatError`` into a reject.
Whole-file problems (missing, empty, not JSON) are never skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, TypeVar

from vilalign.data.images import DataFormatError

logger = logging.getLogger(__name__)

OnBadRecord = Literal["error", "skip"]
T = TypeVar("T")
SKIP_HINT = " (data.on_bad_record: skip drops such records and counts them)"


class BadRecords:
    """The bad records of one dataset split, under ``policy``; ``entries`` are the messages."""

    def __init__(self, policy: OnBadRecord = "error") -> None:
        if policy not in ("error", "skip"):
            raise ValueError(f"on_bad_record: {policy!r} is not 'error' or 'skip'")
        self.policy = policy
        self.entries: list[str] = []

    @property
    def count(self) -> int:
        return len(self.entries)

    def reject(self, message: str) -> None:
        """A record that cannot be used; ``message`` names where ("file:line: reason").

        Raises under ``error``; records it (the caller drops the record) under ``skip``.
        """
        if self.policy == "error":
            raise DataFormatError(message + SKIP_HINT)
        self.entries.append(message)

    def attempt(self, build: Callable[..., T], *args: object) -> T | None:
        """``build(*args)``, or None when it raises DataFormatError and the policy skips."""
        try:
            return build(*args)
        except DataFormatError as err:
            self.reject(str(err))
            return None

    def report(self, what: str) -> None:
        """Log the skipped records once, at the end of loading."""
        if self.entries:
            first = "; ".join(self.entries[:3])
            logger.warning("%s: skipped %d bad record(s), e.g. %s", what, self.count, first)

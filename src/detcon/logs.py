"""Logging set-up: one stderr handler on the ``detcon`` logger, filtered to rank 0, that
survives a terminal or pipe that has gone away."""

from __future__ import annotations

import logging
import sys

from detcon import distributed as dist


class RankZeroFilter(logging.Filter):
    """Drop records on ranks other than 0 (warnings and errors always pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return dist.is_main() or record.levelno >= logging.WARNING


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (robust to redirection and capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass

    def handleError(self, record: logging.LogRecord) -> None:
        """A terminal or pipe that has gone away (``| tee`` killed by the same Ctrl-C, a closed
        stderr) drops the record quietly: the run must still reach its final save."""
        if isinstance(sys.exc_info()[1], OSError | ValueError):
            return
        super().handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """One stderr handler on the ``detcon`` logger, filtered to rank 0; idempotent."""
    logger = logging.getLogger("detcon")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler.addFilter(RankZeroFilter())
        logger.addHandler(handler)
        logger.propagate = False

"""``regan-train``'s console: each event once, in plain words, between the progress bar's redraws.

Hydra's job logging (``conf/hydra/job_logging/regan.yaml``) sends every record to ``<output_dir>/train.log`` in full
(time, logger, level) and to the console through :class:`ConsoleHandler` with :class:`ConsoleFormatter`. Lightning
adds a console handler of its own to the ``lightning`` logger when it is imported, which would print each of its
records a second time: :func:`single_console` removes it once Hydra's handlers are in place. Torch-free.
"""

from __future__ import annotations

import logging


class ConsoleFormatter(logging.Formatter):
    """An INFO record as its message alone; a warning or an error with its level in front (``WARNING: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname}: {message}"


class ConsoleHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write``, so a log line never lands in the middle of the progress
    bar (the bar is cleared, the line written, the bar redrawn below it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def single_console() -> list[logging.Handler]:
    """Remove the console handler Lightning puts on the ``lightning`` logger (its records then reach the console
    once, through the root logger's handlers, and ``train.log``). Only when the root logger has handlers (Hydra's),
    so Lightning's messages are never lost. Returns the removed handlers."""
    import lightning  # noqa: F401  (its handler is added on import: import first, then remove)

    if not logging.getLogger().handlers:
        return []
    logger = logging.getLogger("lightning")
    removed = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    for handler in removed:
        logger.removeHandler(handler)
    return removed


__all__ = ["ConsoleFormatter", "ConsoleHandler", "single_console"]

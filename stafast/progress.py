"""Progress: a tqdm bar on a terminal; in a log (stderr not a terminal) a plain line every 30 s
and one at the end, without the carriage returns a bar redraws itself with."""
from __future__ import annotations

import sys

from tqdm import tqdm

LOG_EVERY_S = 30.0
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class _Lines:
    """tqdm's output as whole lines: its redraws end with a newline, its clearing writes are dropped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """tqdm writing whole lines at most every LOG_EVERY_S (a new postfix waits for the next line)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, file=_Lines(kwargs.pop("file")), mininterval=LOG_EVERY_S, maxinterval=LOG_EVERY_S,
                         miniters=1, bar_format=LOG_FORMAT, leave=True, **kwargs)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def close(self):
        self.leave = getattr(self, "last_print_n", None) != self.n  # the last line, unless just written (or disabled)
        super().close()


def progress_bar(iterable=None, *, desc: str, total: int | None = None, initial: int = 0, enabled: bool = True,
             stream=None) -> tqdm:
    """A progress bar over `iterable` (or updated by hand) on `stream` (stderr): tqdm's bar on a
    terminal, the plain periodic lines elsewhere; nothing when not `enabled`."""
    stream = stream or sys.stderr
    if stream.isatty():
        return tqdm(iterable, desc=desc, total=total, initial=initial, disable=not enabled, leave=False, file=stream)
    return _LogBar(iterable, desc=desc, total=total, initial=initial, disable=not enabled, file=stream)

"""SIGINT / SIGTERM for long commands: the first asks the work to stop cleanly, the second
stops it now.

``normlab compare`` and ``normlab train`` run inside ``graceful_stop()``: a first SIGINT
(Ctrl-C) or SIGTERM (a SLURM pre-emption, ``kill``) sets an event the library checks after
every training step (runs then write a checkpoint at the step reached and end); a second
one raises ``KeyboardInterrupt`` at once (the newest checkpoint, written atomically, is
kept). The previous handlers come back when the block ends.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: The signals handled.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """Set by the first stop signal: ``event`` and the signal's number (``signum``)."""

    event: threading.Event = field(default_factory=threading.Event)
    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "?"

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + (self.signum or signal.SIGINT)


@contextmanager
def graceful_stop(what: str = "the runs") -> Iterator[StopRequest]:
    """Handle SIGINT and SIGTERM in the block as described above (main thread only)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request.event.is_set():
            raise KeyboardInterrupt
        request.signum = signum
        request.event.set()
        print(
            f"\n{signal.Signals(signum).name}: stopping {what} after the current step "
            "(a checkpoint is written); send it again to stop at once",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)

"""Graceful stop on SIGINT / SIGTERM: the first signal asks the loop to checkpoint and return,
a second one exits at once (checkpoints are written atomically, so `latest` stays valid)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# torchrun forwards the signal it receives to its workers, which a Ctrl-C has already reached:
# under torchrun the same signal again within this many seconds is that echo, not a second request.
_ECHO_SECONDS = 2.0


class StopRequest:
    """Context manager that turns SIGINT / SIGTERM into a flag the training loop polls."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._first_at = 0.0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        echo = signum == self.signum and time.monotonic() - self._first_at < _ECHO_SECONDS
        if echo and "TORCHELASTIC_RUN_ID" in os.environ:
            return
        if self.signum is not None:
            # os._exit, not an exception: a second Ctrl-C means "now", even inside a checkpoint write.
            print(f"\n{name} again: exiting immediately (the latest complete checkpoint is kept)",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum, self.signal_name, self._first_at = signum, name, time.monotonic()
        print(f"\n{name} received: finishing this step and writing a checkpoint "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        # Python lets only the main thread install handlers; elsewhere (e.g. a notebook worker
        # thread) signals keep their default behaviour.
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

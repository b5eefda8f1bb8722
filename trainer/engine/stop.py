"""Stopping on a signal: SIGTERM (what Kubernetes and torchrun send before they kill) and SIGINT (Ctrl-C).

`StopSignals` turns the first SIGTERM or SIGINT into a request, never an exception in the middle of a step.
The loop (`trainer.engine.loop.Trainer`) agrees on the request across ranks in the all-reduce every step makes
anyway, so every rank stops after the same step; the checkpoint of that step is written (atomically, as every
checkpoint), rank 0 prints one line (the step, the checkpoint, the command that resumes) and the process ends
with 128 + the signal's number (`RunStopped`: 143 for SIGTERM, 130 for SIGINT). A grace timer bounds it all:
when the step and its checkpoint are not done `grace_s` after the signal, one line says so and names the last
checkpoint there is, and the process ends with the same code (a checkpoint being written is a temp file, so
nothing that looks complete is left half written). A second Ctrl-C stops at once (`KeyboardInterrupt`).

Loader workers are forked with these handlers: in them a signal does nothing (the main process ends them).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(SystemExit):
    """The run stopped on a signal, its state saved (or the grace time ran out); the exit code is 128 + signal.
    A SystemExit: the command line ends with that code and prints nothing more than the run's one line."""

    def __init__(self, signum: int, line: str) -> None:
        super().__init__(128 + signum)
        self.signum, self.line = signum, line


class StopSignals:
    """While installed (`with StopSignals(grace_s):`): SIGTERM / SIGINT request a stop (`signum`); after
    `grace_s` seconds without `done()`, `on_expiry()` says what is left and the process exits."""

    def __init__(self, grace_s: float, on_expiry: Callable[[int], str] | None = None) -> None:
        self.grace_s, self.on_expiry = grace_s, on_expiry
        self.signum = 0  # the first signal received, 0 while none
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    @property
    def requested(self) -> bool:
        return self.signum != 0

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked loader worker: the main process decides and ends it
            return
        if self.signum:
            if signum == signal.SIGINT:  # Ctrl-C twice: stop now, without the checkpoint
                raise KeyboardInterrupt
            return
        self.signum = signum
        self._timer = threading.Timer(self.grace_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        """The grace time is over: one line, then exit with the signal's code (from the timer thread)."""
        if self.on_expiry is not None:
            line = self.on_expiry(self.signum)
            if line:
                print(line, file=sys.stderr, flush=True)
        os._exit(128 + self.signum)

    def done(self) -> None:
        """The stop (or the run) is finished: no more grace timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def resume_command(argv: Sequence[str] | None = None) -> str:
    """The command line that continues this run: the one that started it (under torchrun, its `-m` part after
    the launcher's own options), without `--no-resume`."""
    argv = list(sys.argv if argv is None else argv)
    args = [a for a in argv[1:] if a != "--no-resume"]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    target = f"-m {spec.name}" if spec is not None and spec.name else shlex.quote(argv[0])
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        program = f"torchrun ... {target}"  # the launcher's own options are not this process's to know
    elif (spec is not None and spec.name) or argv[0].endswith(".py"):
        program = f"python {target}"
    else:
        program = os.path.basename(argv[0])  # a console script: mmforge
    return f"{program} {shlex.join(args)}".strip()

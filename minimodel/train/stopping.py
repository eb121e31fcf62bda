"""Stopping cleanly on SIGTERM (a scheduler's pre-emption) or SIGINT (Ctrl-C).

The first signal only asks the training loop to stop: it finishes the step under way, saves a
checkpoint at it and exits with 128 + the signal's number (143, 130). A second signal is
ignored, since schedulers and terminals often send two (torchrun passes on the one it got to
workers that got their own); a third ends the process at once, checkpoint or not.
"""
from __future__ import annotations

import os
import signal
import threading

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While installed (`with StopSignals() as stop:`), counts SIGTERM/SIGINT instead of dying."""

    def __init__(self, ignore_on_exit: bool = False):
        self.received: signal.Signals | None = None  # the first signal, once one came
        self.count = 0
        self._previous: dict = {}
        # a command line that stops cleanly (SystemExit 143/130) ignores SIGTERM/SIGINT from then on:
        # Python resets its handlers to the default while it shuts down, and torchrun's SIGTERM to the
        # ranks still exiting, or a scheduler's second one, would turn the clean stop into a death by signal
        self.ignore_on_exit = ignore_on_exit

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        stopped = exc_type is SystemExit and exc.code in {exit_status(sig) for sig in HANDLED}
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if stopped and self.ignore_on_exit else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.count += 1
        if self.count == 1:
            self.received = signal.Signals(signum)
            return
        if self.count == 2:  # os.write: a print here could re-enter a print the main code is in
            os.write(2, f"{signal.Signals(signum).name} again: still saving the checkpoint; a third signal "
                        "ends the process without it\n".encode())
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def flags(self) -> list[float]:
        """One entry per handled signal (1.0 once received), for the step's all-reduce: summed over
        ranks, any rank's signal stops every rank at the same step."""
        return [float(self.received == sig) for sig in HANDLED]

    @staticmethod
    def agreed(summed_flags: list[float]) -> signal.Signals | None:
        """The signal the ranks stop for, from the summed flags (SIGTERM first when both came)."""
        return next((sig for sig, n in zip(HANDLED, summed_flags) if n > 0), None)


def exit_status(sig: signal.Signals) -> int:
    """The shell's convention for a process ended by a signal: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + int(sig)

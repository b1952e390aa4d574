"""One exit-code contract for every command-line entry point, and its logging set-up.

A script that calls our commands must tell a finding from a mistake from a crash without reading stderr:

- 0: done;
- 1: the job ran and found a problem (validation critical, some inputs failed, drift found);
- 2: bad usage, path, layout, config or model (one line on stderr naming what and what to do);
- 3: an internal error (one line on stderr; the traceback goes to a log file whose path that line names);
- 128 + N: stopped by signal N (130: Ctrl-C, 143: SIGTERM, what Kubernetes sends on eviction), the shell's convention.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_SIGNAL_BASE = 128  # + the signal number
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

logger = logging.getLogger(__name__)

QUIET_LOGGERS = ("onnxscript", "onnx_ir", "great_expectations")


class UsageError(Exception):
    """A user's mistake (usage, path, layout, config, model): the message names it and says what to do; exit 2."""


class Finding(Exception):
    """The job ran and found a problem in what it was given (validation critical, a split without a class): exit 1."""


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines on stderr; third-party chatter above warnings only.

    stdout stays for a command's output, e.g. ``--json``.
    """
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived: the command stops (cleaning up on the way) and exits 128 + the signal number.

    A ``BaseException``, as ``KeyboardInterrupt``: the ``except Exception`` of libraries on the way (an
    orchestrator that goes on with the next step, a signal handler that logs what the handler it chains raises)
    must not swallow it. Not a ``KeyboardInterrupt`` either: Lightning answers that one with ``sys.exit(1)``
    after ignoring every later Ctrl-C.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGTERM or SIGINT into :class:`StopRequested`, raised where the main thread is.

    One signal is enough: a second one while the command cleans up is logged and ignored. Handlers that others
    install meanwhile (ZenML around each step, Lightning during training) call this one after their own.
    """
    received: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        if received:
            logger.warning("%s received again: already stopping", signal.Signals(signum).name)
            return
        received.append(signum)
        logger.warning("%s received: stopping (no second signal needed)", signal.Signals(signum).name)
        raise StopRequested(signum)

    if threading.current_thread() is not threading.main_thread():  # Python delivers signals to the main thread only
        yield
        return
    previous = {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def writable_folder(folder: Path, option: str) -> Path:
    """Check, before any work, that ``folder`` can be written (or created): not after minutes of it.

    Nothing is created: the nearest existing folder on the path is tried with a temporary file (a write tried,
    not permission bits read: root passes those, a read-only mount does not).

    Raises:
        UsageError: the folder cannot be written or created, named with the option that gave it.
    """
    existing = folder.expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {folder}: {existing} is a file, not a folder; pick a writable folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"{option} {folder}: cannot write there ({error.strerror}); pick a writable folder") from None
    return folder


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (argparse turns the error into its usage message, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


@contextlib.contextmanager
def json_stdout(enabled: bool) -> Iterator[TextIO]:
    """The stream a command prints its result to; with ``--json`` (``enabled``) stdout carries that JSON alone.

    Everything else written to ``sys.stdout`` meanwhile goes to stderr: ZenML, for one, logs to stdout
    through a handler it makes when first imported, which happens inside the block.
    """
    stdout = sys.stdout
    if not enabled:
        yield stdout
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield stdout


def crash_log_path(command: str) -> Path:
    """Where the traceback of an internal error of ``command`` is written."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return Path(tempfile.gettempdir()) / f"roadwork-{command}-{stamp}.log"


def run_command(command: str, main: Callable[[], int]) -> int:
    """Run a command's body and map its outcome onto the exit-code contract.

    ``main`` returns 0 or 1; a :class:`Finding` becomes exit 1 and a :class:`UsageError` exit 2, each with its
    message on one line; a :class:`StopRequested` exits 128 + its signal; anything else is an internal error:
    exit 3, one line on stderr, the traceback in :func:`crash_log_path`.
    """
    try:
        with stop_on_signals():
            return main()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Finding as error:
        print(f"found: {error}", file=sys.stderr)
        return EXIT_FINDING
    except StopRequested as stop:
        print(f"stopped: {stop}; the command stopped where it was and cleaned up", file=sys.stderr)
        return EXIT_SIGNAL_BASE + stop.signum
    except Exception as error:  # noqa: BLE001 - the contract: any other failure is reported as an internal error, never a bare traceback
        log = crash_log_path(command)
        log.write_text(traceback.format_exc())
        print(
            f"internal error: {type(error).__name__}: {error} (traceback in {log}; please report it)", file=sys.stderr
        )
        return EXIT_INTERNAL


def run_printing_command(command: str, main: Callable[[TextIO], int], json_output: bool) -> int:
    """:func:`run_command` for a command that prints its result to the stream ``main`` is given: with ``--json``
    (``json_output``) that stream is stdout and carries the JSON alone (:func:`json_stdout`)."""
    with json_stdout(json_output) as out:
        return run_command(command, lambda: main(out))

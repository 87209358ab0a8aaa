"""What every fer-ray CLI shares: known errors become one line on stderr and exit code 2;
checks of flags more than one CLI takes (``--address``)."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import sys
import threading
from collections.abc import Callable
from importlib import metadata
from typing import NoReturn

from fer_ray.errors import ConfigError, FerRayError, reason


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported like every other refusal: one 'error:' line, exit 2
    (argparse's default prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_main(body: Callable[[], int]) -> int:
    """Run a CLI body; FerRayError -> 'error: <message>' on stderr and exit 2, no traceback.

    A closed standard output (``| head``) ends the run quietly with exit 1. SIGTERM (``kill``,
    a scheduler's timeout) unwinds like Ctrl-C, so temporary outputs are removed and the
    previous outputs stay (Python's default would stop without any clean-up).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return body()
    except FerRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Further writes to the closed pipe (at exit, when Python flushes) must not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def add_vote_flags(parser: argparse.ArgumentParser, labels: str | None = None) -> None:
    """``--labels``, ``--votes`` and ``--vote-alpha``: the FER+ options that ``train`` and
    ``search`` share (``labels``: the default of ``--labels``; None leaves it to the config)."""
    parser.add_argument("--labels", choices=["fer2013", "ferplus"], default=labels,
                        help="what the models learn: FER2013's 7 classes (default), or FER+'s "
                             "8 emotions (the crowd's majority; needs FER+ votes)")
    parser.add_argument("--votes", metavar="FOLDER",
                        help="FER+ votes: <name>_votes.npz per <name>.npz of --data / --test "
                             "(default: the folder 'ferplus' beside the data's folder)")
    parser.add_argument("--vote-alpha", type=float, metavar="A",
                        help="training targets A * one_hot(label) + (1 - A) * vote shares "
                             "(default 1 for fer2013, 0 for ferplus)")


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on, for run records."""
    out = {"python": platform.python_version()}
    for pkg in ("fer-ray", "torch", "numpy", "ray", "optuna"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def check_reachable(address: str) -> None:
    """A HOST:PORT address must answer at all: Ray itself retries a dead one for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto" and ray:// addresses: Ray's own lookup fails fast
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ConfigError(f"--address {address}: no Ray cluster answers there "
                          f"({exc.strerror or reason(exc)})") from None

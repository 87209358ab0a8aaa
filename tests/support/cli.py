"""Helpers for the bad-input tables: real command lines, real files, and what must not change.

Every case checks the contract of issue 11: the exit code, exactly one ``error:`` line on
stderr, no traceback, and the files the command was given (or pointed at) left exactly as they
were. Most cases call the command's ``main(argv)`` in this process (``run_in_process``: no
interpreter and no torch import per case); the ones only a real process shows (named pipes
and special files, permissions, signals, a closed stdout, anything past the point where Ray is
imported) run ``python -m fer_ray.<command>`` in a subprocess (``run``), as a user would.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import traceback
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

import fer_ray.data.images  # noqa: F401  (below)
from fer_ray.config import TrainConfig
from fer_ray.ensemble.model import Ensemble, Member
from fer_ray.models import create_model
from fer_ray.models.vgg_fer import MODEL_PRESETS

TIMEOUT = 180  # seconds; a command that blocks (a named pipe) fails the case instead of hanging

# fer_ray.data.images turns PIL's DecompressionBombWarning into an error when imported. Imported
# first inside a test (or inside run_in_process), that filter would go with the test's warning
# filters and later in-process cases would run without it; imported here, at collection, it
# stays for the session, as it does for a process.

# Each command's ``main(argv) -> int`` (what ``python -m fer_ray.<command>`` runs).
MAINS = {"train": "fer_ray.train.cli", "ablate": "fer_ray.ablate", "search": "fer_ray.search.cli",
         "ensemble": "fer_ray.ensemble.cli", "predict": "fer_ray.predict",
         "report": "fer_ray.report.cli", "serve": "fer_ray.serve.cli"}
# Importing these during an in-process case fails it (ImportError, so a traceback on its
# stderr): Ray and the modules that import it at their top. An in-process case must be
# refused before Ray; one that gets further belongs in a real process (``run``).
NO_RAY = ("ray", "fer_ray.search.run", "fer_ray.search.preflight", "fer_ray.search.tuner",
          "fer_ray.serve.app")


def run(command: str, *args: str, cwd: Path | None = None, timeout: float = TIMEOUT,
        as_user: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m fer_ray.<command> ARGS`` with its stdout and stderr captured.

    as_user: file permissions apply (as root: without the capabilities that override them),
    so a ``chmod 000`` file is unreadable, as it is for any user.
    """
    prefix: list[str] = []
    if as_user and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permissions cannot apply")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    return subprocess.run([*prefix, sys.executable, "-m", f"fer_ray.{command}", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# What Python's default warning filters hide (``python -W`` unset): never on a command's stderr.
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_in_process(command: str, *args: str, cwd: Path | None = None
                   ) -> subprocess.CompletedProcess[str]:
    """``main(ARGS)`` of ``fer_ray.<command>`` in this process, shaped like ``run``'s result.

    What a real process would show is kept: SystemExit (argparse) becomes the exit code, an
    exception escaping ``main`` a traceback on stderr and exit 1, warnings (but the
    kinds Python hides by default) and log records without a handler lines on
    stderr. What the command may change for the whole process is put back afterwards: the
    working folder, the SIGTERM handler (``run_main`` installs its own), the warning filters,
    the root logger's handlers. Ray cannot be imported meanwhile (``NO_RAY``).
    """
    main = importlib.import_module(MAINS[command]).main
    out, err = io.StringIO(), io.StringIO()
    with _process_state_restored(cwd), redirect_stdout(out), redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        try:
            code = main(list(args))
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except Exception:
            traceback.print_exc()
            code = 1
        for w in caught:
            if not issubclass(w.category, HIDDEN_WARNINGS):
                err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno,
                                                 w.line))
    return subprocess.CompletedProcess([command, *args], code, out.getvalue(), err.getvalue())


@contextmanager
def _process_state_restored(cwd: Path | None) -> Iterator[None]:
    folder = os.getcwd()
    sigterm = signal.getsignal(signal.SIGTERM)
    root = logging.getLogger()
    handlers = root.handlers[:]
    hidden = {name: sys.modules.get(name) for name in NO_RAY}
    try:
        root.handlers = []  # records go to logging's last resort: this stderr, as in a process
        sys.modules.update(dict.fromkeys(NO_RAY))  # None: "import ray" raises ImportError
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(folder)
        signal.signal(signal.SIGTERM, sigterm)
        root.handlers = handlers
        for name, module in hidden.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def assert_refused(proc: subprocess.CompletedProcess[str], expected: str,
                   code: int = 2) -> None:
    """Exit ``code``, one stderr line 'error: ...' holding ``expected``, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert expected in lines[0], (expected, lines[0])


def refused_with_files_untouched(command: str, t: Path, setup: Callable[[Path], None],
                                 args: list[str], expected: str, default: tuple[str, str],
                                 fixed: Sequence[str] = (), cwd: Path | None = None,
                                 real_process: bool = False,
                                 ) -> subprocess.CompletedProcess[str]:
    """One row of a bad-input table: ``setup(t)``, then ``<command> FIXED ARGS`` (``{t}``
    filled in; ``default`` = (flag, value) added when ARGS lack the flag) must be refused
    (``assert_refused``) with every file under ``t`` unchanged. In this process unless
    ``real_process`` (``python -m fer_ray.<command>``)."""
    setup(t)
    args = [a.format(t=t) for a in args]
    if default[0] not in args:
        args = [*default, *args]
    before = snapshot(t)
    proc = (run if real_process else run_in_process)(command, *fixed, *args, cwd=cwd)
    assert_refused(proc, expected.format(t=t))
    assert snapshot(t) == before, args
    return proc


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by content hash, folders, links and pipes by kind
    (never opened, so a named pipe is safe to snapshot)."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "folder"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "special"
    return out


def save_tiny_ensemble(folder: Path, members: int = 1) -> Path:
    """A real ensemble of ``vgg_fer_tiny`` nets (random weights), saved without any search."""
    config = TrainConfig(model=MODEL_PRESETS["vgg_fer_tiny"])
    nets = [Member(f"m{i}", config, create_model("vgg_fer_tiny").eval()) for i in range(members)]
    Ensemble(nets, np.ones(members) / members, temperature=1.5,  # type: ignore[arg-type]
             defer_threshold=0.3).save(folder)
    return folder


def faces(n: int, seed: int = 0) -> np.ndarray:
    """(n, 48, 48) uint8 random faces (predictions need images, not realistic ones)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def npy_header_only(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    """An .npy file that declares ``shape`` but holds no data: what a compressed bomb looks like
    to a reader that checks headers (the data would only be decompressed afterwards)."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")


def npz_declaring(path: Path, shape: tuple[int, ...], dtype: str = "|u1") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images.npy", npy_header_only(shape, dtype) + b"\0" * 64)
    return path


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height (grayscale) and whose data is a few bytes: small
    on disk, huge once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))
    return path


def fifo(path: Path) -> Path:
    """A named pipe nobody writes to: a reader that opens it blocks forever."""
    os.mkfifo(path)
    return path

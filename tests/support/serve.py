"""The real service for tests: ``python -m fer_ray.serve`` in a subprocess on a free loopback
port, waited for over HTTP, and stopped with SIGTERM as a user's ``kill`` would."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from PIL import Image

START_TIMEOUT = 240.0  # seconds: Ray, Serve's controller and proxy, then the replica


@dataclass
class Service:
    url: str
    port: int
    ensemble: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_addresses(port: int) -> set[str]:
    """IPv4/IPv6 addresses with a TCP socket listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                if len(address) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(address)
    return found


def astronaut_png() -> bytes:
    """skimage's astronaut: a real 512x512 RGB photo with one frontal face."""
    from skimage import data

    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, "PNG")
    return out.getvalue()


def astronaut_crop(fraction: float, side: int = 100) -> np.ndarray:
    """(side, side) uint8 gray: the astronaut's face as an aligned-face dataset crops it, a
    square ``fraction`` of the detector's box side about the box's centre (under 1: tighter
    than the box, as RAF-DB's 100x100 faces are), resized to ``side`` px."""
    from skimage import data

    from fer_ray.data.faces import detect_faces
    from fer_ray.data.images import to_gray

    gray = to_gray(data.astronaut())[0]
    (box,) = detect_faces(gray)  # found on the whole photo, where it has background around it
    crop = round(box.w * fraction)
    left, top = round(box.x + (box.w - crop) / 2), round(box.y + (box.h - crop) / 2)
    face = Image.fromarray(gray[top:top + crop, left:left + crop])
    return np.asarray(face.resize((side, side), Image.Resampling.BOX))


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


@contextmanager
def running_service(ensemble: Path, folder: Path, *flags: str) -> Iterator[Service]:
    """The service on a free port until the block ends; then SIGTERM, and it must exit 0."""
    port = free_port()
    log = folder / "serve.log"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fer_ray.serve", "--ensemble", str(ensemble),
             "--port", str(port), *flags], stdout=out, stderr=subprocess.STDOUT, env=env,
            stdin=subprocess.DEVNULL, start_new_session=True)
    service = Service(f"http://127.0.0.1:{port}/", port, ensemble, log, proc)
    try:
        _wait_until_up(service)
        yield service
    finally:
        stopped = _stop(proc)
    assert stopped == 0, f"exit {stopped} after SIGTERM:\n{service.tail()}"
    assert "Traceback" not in service.tail(), service.tail()


def _wait_until_up(service: Service) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise AssertionError(f"the service exited ({service.proc.returncode}):\n"
                                 f"{service.tail()}")
        try:
            if requests.get(service.url + "healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no answer from {service.url} in {START_TIMEOUT:.0f} s:\n"
                         f"{service.tail()}")


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, as ``kill`` sends; the whole process group if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            proc.wait()
            return None
    return proc.returncode

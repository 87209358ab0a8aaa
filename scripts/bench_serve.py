"""Load test of the Serve app: N concurrent clients for T seconds, several N and --max-batch.

    .venv/bin/python scripts/bench_serve.py --ensemble DIR [--max-batch 1,8,32]
    .venv/bin/python scripts/bench_serve.py --url http://127.0.0.1:8000/   # a running one

With ``--ensemble`` the service is deployed in this process (a local Ray) once per
``--max-batch`` value; with ``--url`` the running service is measured as it is (its batch
size is read from /info). Loopback only: other hosts are refused, this is not a tool to load
someone else's server. Each client is a thread with its own keep-alive connection that posts
the photo (multipart) again as soon as the answer comes, for ``--seconds``; the clients run in
this process, so on a small machine they take CPU from the service too (said in the output).

Printed per (max-batch, clients): requests/s, p50/p95/p99 latency, errors, mean batch size
(from /info), and the predict CLI's per-photo cost for the same photo: warm (one
``Recognizer.recognize`` call, in-process, after a warm-up) and cold (``python -m
fer_ray.predict`` as a subprocess: interpreter, imports, loading the ensemble, one photo).
"""

from __future__ import annotations

import os

# Before anything imports Ray: a local cluster must agree on auth; no usage reporting.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests

MAX_CLIENTS = 64
MAX_SECONDS = 120.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Load:
    """What one (max-batch, clients) run measured."""

    clients: int
    seconds: float
    latencies: list[float]
    errors: int
    photos: int  # photos and ensemble calls in the replica meanwhile (from /info; 0: unknown)
    batches: int

    def row(self, max_batch: str) -> str:
        lat = sorted(self.latencies) or [float("nan")]
        pct = [lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 for q in (0.5, 0.95, 0.99)]
        # "-": several replicas, whose batches /info cannot add up (see ``counts``)
        mean_batch = f"{self.photos / self.batches:.1f}" if self.batches else "-"
        return (f"| {max_batch} | {self.clients} | {len(self.latencies) / self.seconds:.1f} | "
                f"{pct[0]:.0f} | {pct[1]:.0f} | {pct[2]:.0f} | {self.errors} | "
                f"{mean_batch} |")


def loopback_url(url: str) -> str:
    parts = urlparse(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        raise SystemExit(f"error: --url {url}: only http://127.0.0.1, localhost or [::1]")
    return url if url.endswith("/") else url + "/"


def counts(url: str) -> tuple[int, int]:
    """(photos, ensemble calls) so far, or (0, 0) with several replicas: /info answers from
    whichever replica the request reached, so differences would mix replicas."""
    info = requests.get(url + "info", timeout=30).json()
    if info["settings"]["replicas"] > 1:
        return 0, 0
    return int(info["replica"]["photos"]), int(info["replica"]["batches"])


def load(url: str, photo: bytes, clients: int, seconds: float) -> Load:
    """``clients`` threads posting ``photo`` back to back until ``seconds`` have passed."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_photos, start_batches = counts(url)
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        with requests.Session() as session:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = session.post(url + "predict", timeout=60,
                                     files={"file": ("photo.png", photo, "image/png")})
                    ok = r.status_code == 200
                except requests.RequestException:
                    ok = False
                if ok:
                    latencies[i].append(time.perf_counter() - t0)
                else:
                    errors[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    end_photos, end_batches = counts(url)
    return Load(clients, elapsed, [x for per in latencies for x in per], sum(errors),
                end_photos - start_photos, end_batches - start_batches)


def predict_costs(ensemble: str, photo: bytes, repeats: int) -> tuple[float, float]:
    """(warm seconds per photo in-process, cold seconds of one predict CLI subprocess)."""
    from fer_ray.data.images import decode_photo
    from fer_ray.recognize import Recognizer

    rec = Recognizer.load(ensemble, device="cpu")
    image = decode_photo(photo, "photo")
    rec.recognize(image)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rec.recognize(image)
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.png"
        path.write_bytes(photo)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fer_ray.predict", "--ensemble", ensemble,
                        "--faces", "detect", str(path), "--out", str(Path(tmp) / "rows.csv")],
                       check=True, capture_output=True, timeout=300)
        cold = time.perf_counter() - t0
    return statistics.median(times), cold


def read_photo(path: str | None) -> bytes:
    if path:
        return Path(path).read_bytes()
    from PIL import Image
    from skimage import data

    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, "PNG")
    return out.getvalue()


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or len(values) > 8 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: 1 to 8 positive integers, comma-separated")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--ensemble", help="deploy this ensemble here, once per --max-batch")
    where.add_argument("--url", help="measure a running service (loopback only)")
    p.add_argument("--photo", help="the photo every request sends (default: skimage astronaut)")
    p.add_argument("--clients", type=int_list, default=[1, 4, 16, 32],
                   help=f"concurrencies, comma-separated (each at most {MAX_CLIENTS})")
    p.add_argument("--max-batch", type=int_list, default=[1, 8, 32],
                   help="--max-batch values to deploy (with --ensemble)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=20.0,
                   help=f"per (max-batch, clients) run, at most {MAX_SECONDS:g}")
    p.add_argument("--port", type=int, default=0, help="with --ensemble (default: a free one)")
    p.add_argument("--quick", action="store_true",
                   help="clients 1,4; max-batch 1,8; 3 s each; 2 warm repeats")
    return p


def checked(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.clients, args.max_batch, args.seconds = [1, 4], [1, 8], 3.0
    if max(args.clients) > MAX_CLIENTS:
        raise SystemExit(f"error: --clients: at most {MAX_CLIENTS}")
    if not 0 < args.seconds <= MAX_SECONDS:
        raise SystemExit(f"error: --seconds: above 0 and at most {MAX_SECONDS:g}")
    if args.url:
        args.url = loopback_url(args.url)
    return args


def measure(url: str, photo: bytes, clients: list[int], seconds: float,
            max_batch: str) -> list[str]:
    rows = []
    for n in clients:
        rows.append(load(url, photo, n, seconds).row(max_batch))
        print(rows[-1], flush=True)
    return rows


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_deployed(args: argparse.Namespace, photo: bytes) -> list[str]:
    """Deploy the ensemble here once per --max-batch value and measure each."""
    import logging

    import ray

    from fer_ray.serve.app import deploy, undeploy
    from fer_ray.serve.settings import ServeSettings

    ray.init(include_dashboard=False, logging_level=logging.ERROR)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not a line per redeploy
    rows: list[str] = []
    try:
        port = args.port or free_port()
        for b in args.max_batch:
            settings = ServeSettings(
                ensemble=args.ensemble, port=port, replicas=args.replicas,
                cpus_per_replica=args.cpus_per_replica, max_batch=b,
                batch_wait_ms=args.batch_wait_ms)
            settings.check()
            url = deploy(settings)
            requests.post(url + "predict", files={"file": ("p.png", photo)}, timeout=60)
            rows += measure(url, photo, args.clients, args.seconds, str(b))
    finally:
        undeploy(shutdown_serve=True)
        ray.shutdown()
    return rows


HEADER = ("| max-batch | clients | requests/s | p50 ms | p95 ms | p99 ms | errors | "
          "photos/batch |\n|---|---|---|---|---|---|---|---|")


def main() -> int:
    args = checked(build_parser().parse_args())
    photo = read_photo(args.photo)
    deployed = "" if args.url else (f"; replicas {args.replicas} x {args.cpus_per_replica:g} "
                                     f"CPU, batch wait {args.batch_wait_ms:g} ms")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"the clients run in this process; {args.seconds:g} s per run{deployed}", flush=True)
    print(HEADER, flush=True)
    if args.url:
        batch = requests.get(args.url + "info", timeout=30).json()["settings"]["max_batch"]
        measure(args.url, photo, args.clients, args.seconds, f"{batch} (running)")
        return 0
    run_deployed(args, photo)
    warm, cold = predict_costs(args.ensemble, photo, 2 if args.quick else 20)
    print(f"\npredict, same photo: warm {warm * 1000:.0f} ms per photo "
          f"(Recognizer.recognize in-process, {_threads()} torch threads); "
          f"cold {cold:.1f} s (python -m fer_ray.predict subprocess)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())

"""``python -m fer_ray.serve --ensemble DIR [--host H] [--port P] [--replicas N] ...``

Serves an ensemble over HTTP with Ray Serve until Ctrl-C or SIGTERM, then removes it again.
Every flag, the ensemble folder, the port and the resources asked for are checked before Ray
starts (a replica that can never be placed would otherwise wait forever). Binds to
127.0.0.1 unless told otherwise: see the README on exposing it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import warnings
from typing import Any

from fer_ray._cli import ArgumentParser, check_reachable, run_main
from fer_ray.errors import ConfigError, FerRayError, reason
from fer_ray.serve.settings import ServeSettings

DEFAULTS = ServeSettings(ensemble="")


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = ArgumentParser(prog="python -m fer_ray.serve",
                       description="Serve an ensemble over HTTP (Ray Serve): POST /predict, "
                                   "a page at /, GET /healthz and /info.")
    p.add_argument("--ensemble", required=True,
                   help="an ensemble folder (or its URI), or an exported .onnx file")
    p.add_argument("--host", default=d.host,
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--replicas", type=int, default=d.replicas)
    p.add_argument("--cpus-per-replica", type=float, default=d.cpus_per_replica,
                   help="CPUs Ray reserves per replica (also its inference threads)")
    p.add_argument("--gpus-per-replica", type=float, default=d.gpus_per_replica,
                   help="0: CPU inference; fractions share a GPU between replicas")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help="photos recognised together by one ensemble call")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help="how long a batch waits to fill up")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb,
                   help="larger request bodies are refused with 413")
    p.add_argument("--address", help="deploy onto a running Ray cluster: auto or HOST:PORT")
    return p


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(**vars(args))


def check_port_free(host: str, port: int) -> None:
    """ConfigError when this machine cannot listen on host:port (taken, or no such address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: unknown address ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there "
                              f"({exc.strerror or reason(exc)})") from None


def check_ensemble(settings: ServeSettings) -> str:
    """Load the ensemble here once, on the CPU, so a damaged one is refused (DataError, one
    line) before Ray starts rather than by replicas that fail and are retried; its id."""
    from fer_ray.recognize import Recognizer

    return Recognizer.load(settings.ensemble, device="cpu").ensemble_id


def join_ray(settings: ServeSettings) -> bool:
    """Start a local Ray, or join --address and check the replicas fit on that cluster;
    True when this process started Ray (and so stops it at the end)."""
    import ray

    logging.getLogger("ray").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="ray")
    common: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR}
    if ray.is_initialized():
        return False
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if settings.address is None:
            ray.init(**common)
            return True
        _join_cluster(settings.address, settings, common)
        return False
    finally:
        # Ray's core worker installs a SIGTERM handler that aborts the process (exit -6,
        # nothing cleaned up); put back the one that unwinds (run_main's).
        signal.signal(signal.SIGTERM, on_sigterm)


def _join_cluster(address: str, settings: ServeSettings, common: dict[str, Any]) -> None:
    """Join --address; ConfigError when it does not answer or the replicas cannot fit."""
    import ray

    check_reachable(address)  # Ray itself retries a dead address for minutes
    try:
        ray.init(address=address, **common)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError ...
        raise ConfigError(f"--address {address}: cannot join the Ray cluster "
                          f"({reason(exc)})") from None
    resources = ray.cluster_resources()
    try:
        settings.check_fits(resources.get("CPU", 0.0), resources.get("GPU", 0.0),
                            "the Ray cluster")
    except ConfigError:
        ray.shutdown()
        raise


def serve_until_stopped(settings: ServeSettings, ensemble_id: str) -> None:
    """Deploy, print the URL, serve until Ctrl-C / SIGTERM, remove what was started."""
    import ray

    from fer_ray.serve.app import deploy, undeploy

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not every request's line
    started_ray = join_ray(settings)
    try:
        try:
            url = deploy(settings)
        except FerRayError:
            raise
        except Exception as exc:  # a replica that failed to start: Serve says why
            raise ConfigError(f"the service did not start ({reason(exc)})") from None
        print(f"serving {settings.ensemble} (id {ensemble_id}) at {url} (Ctrl-C to stop)",
              flush=True)
        threading.Event().wait()  # until KeyboardInterrupt or SystemExit (SIGTERM)
    finally:
        try:
            undeploy(shutdown_serve=settings.address is None)
        finally:
            if started_ray:
                ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        settings = settings_from_args(args)
        settings.check()
        if settings.address is None:
            from fer_ray.models.inference import local_resources  # torch: after the flags

            settings.check_fits(*local_resources(), "this machine")
            check_port_free(settings.host, settings.port)
        ensemble_id = check_ensemble(settings)
        try:
            serve_until_stopped(settings, ensemble_id)
        except (KeyboardInterrupt, SystemExit):  # SystemExit: SIGTERM, from run_main
            print("stopped", file=sys.stderr, flush=True)
        return 0  # Ctrl-C and SIGTERM are how the service is meant to stop

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

"""The service's settings and their checks (no Ray, no torch: refused flags fail fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fer_ray import storage
from fer_ray.errors import ConfigError
from fer_ray.paths import shown

ENSEMBLE_JSON = "ensemble.json"  # what makes a folder an ensemble (fer_ray.ensemble.model)
LOOPBACK = "127.0.0.1"
MAX_PHOTOS = 16  # photos in one request: each is one item of the replica's batch


@dataclass(frozen=True)
class ServeSettings:
    """What ``python -m fer_ray.serve`` was asked for; ``check()`` refuses bad values."""

    ensemble: str
    host: str = LOOPBACK
    port: int = 8000
    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_batch: int = 16
    batch_wait_ms: float = 10.0
    max_upload_mb: float = 20.0
    address: str | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """ConfigError naming the flag for the first bad value. The ensemble must be a folder
        holding ensemble.json or an exported ``.onnx`` file (URIs: fetched when loaded)."""
        if not storage.is_uri(self.ensemble):
            where = Path(self.ensemble)
            onnx = where.suffix == ".onnx" and where.is_file()
            if not onnx and not (where / ENSEMBLE_JSON).is_file():
                raise ConfigError(f"--ensemble {shown(where)}: not an ensemble folder (no "
                                  f"{ENSEMBLE_JSON}) or .onnx file")
        if not self.host.strip():
            raise ConfigError("--host: empty")
        checks: list[tuple[bool, str]] = [
            (1 <= self.port <= 65535, f"--port {self.port}: not in 1..65535"),
            (self.replicas >= 1, f"--replicas {self.replicas}: must be at least 1"),
            (self.cpus_per_replica > 0,
             f"--cpus-per-replica {self.cpus_per_replica:g}: must be above 0"),
            (self.gpus_per_replica >= 0,
             f"--gpus-per-replica {self.gpus_per_replica:g}: must be 0 or more"),
            (self.max_batch >= 1, f"--max-batch {self.max_batch}: must be at least 1"),
            (self.batch_wait_ms >= 0,
             f"--batch-wait-ms {self.batch_wait_ms:g}: must be 0 or more"),
            (self.max_upload_mb > 0 and self.max_upload_bytes >= 1,
             f"--max-upload-mb {self.max_upload_mb:g}: must be above 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.gpus_per_replica > 0 and str(self.ensemble).endswith(".onnx"):
            raise ConfigError(f"--gpus-per-replica {self.gpus_per_replica:g}: an .onnx "
                              f"ensemble runs on the CPU (onnxruntime); serve the ensemble "
                              f"folder to use a GPU")
        if self.gpus_per_replica > 1 and self.gpus_per_replica != int(self.gpus_per_replica):
            raise ConfigError(f"--gpus-per-replica {self.gpus_per_replica:g}: above 1 it must "
                              f"be a whole number")

    def check_fits(self, cpus: float, gpus: float, where: str) -> None:
        """ConfigError when the replicas cannot all be placed on ``cpus``/``gpus`` (Ray would
        otherwise wait forever for resources that never come)."""
        need_cpus = self.replicas * self.cpus_per_replica
        need_gpus = self.replicas * self.gpus_per_replica
        if self.gpus_per_replica > 0 and gpus <= 0:
            raise ConfigError(f"--gpus-per-replica {self.gpus_per_replica:g}: {where} has no GPU")
        if need_gpus > gpus:
            raise ConfigError(f"--replicas {self.replicas} x --gpus-per-replica "
                              f"{self.gpus_per_replica:g} = {need_gpus:g} GPUs, but {where} "
                              f"has {gpus:g}")
        if need_cpus > cpus:
            raise ConfigError(f"--replicas {self.replicas} x --cpus-per-replica "
                              f"{self.cpus_per_replica:g} = {need_cpus:g} CPUs, but {where} "
                              f"has {cpus:g}")


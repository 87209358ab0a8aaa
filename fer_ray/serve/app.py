"""The Ray Serve application: one FastAPI ingress deployment around a ``Recognizer``.

Routes: ``POST /predict`` (photos -> faces, boxes, probabilities), ``GET /`` (the page),
``GET /healthz``, ``GET /info``. Each replica loads the ensemble once, on its GPU when Ray
gave it one (``ray.get_gpu_ids()``: Ray does not hide the GPUs from replicas that asked for
none, so CUDA being visible says nothing). The photos of all requests a replica holds are
gathered by ``serve.batch`` and recognised by one ``recognize_many`` call, which runs the
ensemble once for all their faces. Refused requests get ``{"error": "<one line>"}`` with a
4xx status (``uploads``); nothing a client sends stops the service.
"""

# No ``from __future__ import annotations``: FastAPI reads the route parameters' types at
# runtime, from the signatures Serve rewrites, and string annotations do not survive that.
import asyncio
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import numpy as np
import ray
from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from fer_ray.data.faces import MIN_FACE
from fer_ray.errors import reason
from fer_ray.recognize import FacesMode, PhotoResult, Recognizer
from fer_ray.serve.settings import MAX_PHOTOS, ServeSettings
from fer_ray.serve.uploads import HTTPError, decode, uploads_from

APP_NAME = "fer-ray"
PAGE = resources.files("fer_ray.serve").joinpath("page.html").read_text(encoding="utf-8")
Rule = Literal["argmax", "adjusted"]  # Ensemble.decide's rules

api = FastAPI(title="fer-ray", docs_url=None, redoc_url=None, openapi_url=None)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


@api.exception_handler(HTTPError)
async def _refused(request: Request, exc: HTTPError) -> JSONResponse:
    return _error(exc.status, exc.message)


@api.exception_handler(StarletteHTTPException)
async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))  # 404, 405, a malformed multipart body


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = " ".join(str(p) for p in first.get("loc", ()))
    return _error(400, f"{where}: {first.get('msg', 'invalid')}")


@api.exception_handler(Exception)
async def _crashed(request: Request, exc: Exception) -> JSONResponse:
    return _error(500, f"internal error ({type(exc).__name__})")


@dataclass(frozen=True)
class Job:
    """One photo of one request, waiting in the replica's batch."""

    image: np.ndarray
    faces: str
    min_face: int
    rule: str


def photo_dict(source: str, result: PhotoResult) -> dict[str, Any]:
    return {"source": source, "width": result.width, "height": result.height,
            "error": result.error, "faces": [face.to_dict() for face in result.faces]}


@serve.deployment(name="FerRay")
@serve.ingress(api)
class FerService:
    """A replica: the ensemble, loaded once, behind the HTTP routes."""

    def __init__(self, settings: dict[str, Any]) -> None:
        # Replicas log through Ray; requests are many, so only warnings and errors.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        self.settings = ServeSettings(**settings)
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.rec = Recognizer.load(self.settings.ensemble, engine="auto", device=self.device)
        batched: Any = self.recognize_batch  # serve.batch's setters: not in its type
        batched.set_max_batch_size(self.settings.max_batch)
        batched.set_batch_wait_timeout_s(self.settings.batch_wait_ms / 1000)
        self.stats = {"photos": 0, "batches": 0, "largest_batch": 0}
        # The first call pays one-off costs (allocations, kernel choice): not a client's.
        self.rec.recognize(np.zeros((48, 48), np.uint8), faces="none")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)  # set from the flags above
    async def recognize_batch(self, jobs: list[Job]) -> list[PhotoResult]:
        # In a thread: the replica's event loop keeps reading requests into the next batch.
        return await asyncio.to_thread(self._recognize_jobs, jobs)

    def _recognize_jobs(self, jobs: list[Job]) -> list[PhotoResult]:
        """One ``recognize_many`` call per distinct option set (one, in practice)."""
        groups: dict[tuple[str, int, str], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.faces, job.min_face, job.rule), []).append(i)
        results: list[PhotoResult | None] = [None] * len(jobs)
        for (faces, min_face, rule), where in groups.items():
            found = self.rec.recognize_many([jobs[i].image for i in where], faces=faces,
                                            min_face=min_face, rule=rule)
            for i, result in zip(where, found, strict=True):
                results[i] = result
        self.stats["photos"] += len(jobs)
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        return [r for r in results if r is not None]

    @api.post("/predict")
    async def predict(self, request: Request, faces: FacesMode = "auto",
                      min_face: int = Query(MIN_FACE, ge=1, le=4096),
                      rule: Rule = "argmax") -> JSONResponse:
        """Photos in (multipart, JSON base64 or a raw image body) -> faces and emotions."""
        uploads = await uploads_from(request, self.settings.max_upload_bytes)
        images = [await asyncio.to_thread(decode, upload) for upload in uploads]
        try:
            results = await asyncio.gather(*(self.recognize_batch(
                Job(image, faces, min_face, rule)) for image in images))
        except Exception as exc:  # the whole batch failed: every request in it is told
            raise HTTPError(500, f"recognition failed ({reason(exc)})") from None
        return JSONResponse({
            "ensemble": {"id": self.rec.ensemble_id, "version": self.rec.version},
            "photos": [photo_dict(u.source, r) for u, r in zip(uploads, results, strict=True)]})

    @api.get("/")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        return JSONResponse({"status": "ok", "ensemble": self.rec.ensemble_id})

    @api.get("/info")
    async def info(self) -> JSONResponse:
        """The ensemble (members, validation/test figures) and this replica's settings."""
        s = self.settings
        return JSONResponse({
            "ensemble": {"id": self.rec.ensemble_id, "version": self.rec.version},
            "classes": list(self.rec.classes), "members": self.rec.members, "info": self.rec.info,
            "replica": {"device": self.device, **self.stats},
            "settings": {"replicas": s.replicas, "max_batch": s.max_batch,
                         "batch_wait_ms": s.batch_wait_ms,
                         "max_upload_bytes": s.max_upload_bytes, "max_photos": MAX_PHOTOS}})


def build_app(settings: ServeSettings) -> Any:
    """The bound application for ``serve.run``: replicas, their resources, batching."""
    return FerService.options(  # type: ignore[attr-defined]
        num_replicas=settings.replicas,
        # A batch only fills when a replica holds at least that many requests at once.
        max_ongoing_requests=max(2 * settings.max_batch, 32),
        ray_actor_options={"num_cpus": settings.cpus_per_replica,
                           "num_gpus": settings.gpus_per_replica},
    ).bind(settings.to_dict())


def deploy(settings: ServeSettings) -> str:
    """Start Serve's HTTP proxy on --host/--port (in the Ray this process joined) and run
    the application there, replacing an earlier one; returns its URL once it answers."""
    serve.start(http_options={"host": settings.host, "port": settings.port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/",
              logging_config={"log_level": "WARNING", "enable_access_log": False})
    return settings.url


def undeploy(shutdown_serve: bool) -> None:
    """Remove the application; with ``shutdown_serve`` also Serve itself (its proxy and
    controller), which a shared cluster's other applications may still need."""
    if shutdown_serve:
        serve.shutdown()
    else:
        serve.delete(APP_NAME)

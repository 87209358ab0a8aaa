"""From an HTTP request to decoded photos, or an ``HTTPError`` with its status and one line.

Accepted bodies: ``multipart/form-data`` (every file field, in order), ``application/json``
(``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}``; data URLs too) and a raw
``image/*`` body. Status codes: 413 for a body over the size limit (refused from its
Content-Length before it is read, or as soon as it grows past the limit), 415 for a body type
other than those or an upload that is no image format at all, 400 for everything else that
is wrong (a damaged image, bad base64, no photo, too many photos). Decoding itself is
``fer_ray.data.images.decode_photo``: the same checks as the predict CLI.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from starlette.requests import Request

from fer_ray.data.images import decode_photo
from fer_ray.errors import DataError, reason
from fer_ray.serve.settings import MAX_PHOTOS

FORMATS = "PNG, JPEG, GIF, BMP, TIFF, WebP"


class HTTPError(Exception):
    """A refused request: ``status`` and the one-line message sent as ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())  # one line, whatever the cause said


@dataclass
class Upload:
    """One photo's bytes and the name it is reported under (file name or JSON position)."""

    source: str
    data: bytes


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 past ``limit`` bytes (before reading, when the
    client declared its length)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit, at_least=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> HTTPError:
    more = "over " if at_least else ""
    return HTTPError(413, f"request body is {more}{size} bytes, over the limit of {limit} "
                          f"bytes (--max-upload-mb)")


async def uploads_from(request: Request, limit: int) -> list[Upload]:
    """The photos a request carries (see the module doc), as bytes; not decoded yet."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("multipart/form-data", "application/json") \
            and not kind.startswith("image/") and kind != "application/octet-stream":
        raise HTTPError(415, f"unsupported Content-Type {kind or 'none'!r}: send "
                             f"multipart/form-data (a file field), application/json "
                             f'({{"images": ["<base64>"]}}) or an image/* body')
    body = await read_body(request, limit)
    if kind == "multipart/form-data":
        found = await _multipart(request, body)
    elif kind == "application/json":
        found = _json(body)
    else:
        found = [Upload("body", body)]
    if not found:
        raise HTTPError(400, "no photo in the request (multipart: a file field; JSON: "
                             '"image" or "images")')
    if len(found) > MAX_PHOTOS:
        raise HTTPError(400, f"{len(found)} photos in one request; at most {MAX_PHOTOS}")
    return found


async def _multipart(request: Request, body: bytes) -> list[Upload]:
    """The file fields of a multipart body (already read, so the size limit held)."""
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    # A fresh Request over the bytes already read: starlette's parser, not a second one here.
    form = await Request(request.scope, receive=replay).form(
        max_files=MAX_PHOTOS + 1, max_fields=MAX_PHOTOS + 1)
    try:
        files = [(key, value) for key, value in form.multi_items()
                 if not isinstance(value, str)]
        return [Upload(value.filename or key, await value.read()) for key, value in files]
    finally:
        await form.close()


def _json(body: bytes) -> list[Upload]:
    """``{"image": b64}`` or ``{"images": [b64, ...]}`` -> uploads named images[i]."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"body is not valid JSON ({reason(exc)})") from None
    if not isinstance(doc, dict) or not ({"image", "images"} & doc.keys()):
        raise HTTPError(400, 'JSON body must be an object with "image" or "images"')
    items = doc.get("images", [doc.get("image")])
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise HTTPError(400, '"images" must be a list of base64 strings')
    return [Upload(f"images[{i}]", _b64(text, f"images[{i}]")) for i, text in enumerate(items)]


def _b64(text: str, what: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL, as browsers write them
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HTTPError(400, f"{what}: not valid base64 ({reason(exc)})") from None


def is_image_format(data: bytes) -> bool:
    """Whether the first bytes are the signature of a format PIL reads. Only the signature:
    a PNG damaged after it is a damaged image (400), not another media type (415)."""
    Image.init()
    head = data[:16]  # what Image.open shows each format's check
    for _, accept in Image.OPEN.values():
        try:
            if accept is not None and accept(head):  # None: a format with no signature
                return True
        except (SyntaxError, IndexError, TypeError, ValueError, struct.error):
            continue  # as Image.open does: too short for that format's check
    return False


def decode(upload: Upload) -> np.ndarray:
    """(H, W, 3) uint8 RGB; 415 when no image format recognises the bytes, 400 when the
    image is damaged or refused by ``decode_photo`` (e.g. too many pixels)."""
    if not upload.data:
        raise HTTPError(400, f"{upload.source}: empty file")
    if not is_image_format(upload.data):
        raise HTTPError(415, f"{upload.source}: not an image ({FORMATS})")
    try:
        return decode_photo(upload.data, upload.source)
    except DataError as exc:
        raise HTTPError(400, str(exc)) from None


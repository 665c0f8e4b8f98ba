"""The local web app of ``multilabel-imagenet label-regions`` (paper Supp. F.5): open an image, draw a box or pick a
proposal, and read the region labeler's ranked classes.

:class:`LabelingApp` holds the state (labeler, images, proposals, caches) and answers the JSON API; :func:`make_server`
puts it behind a stdlib ``ThreadingHTTPServer`` (loopback by default). The page itself is package data
(``static/labeler.html``, ``.js``, ``.css``). API:

- ``GET /api/info``; ``GET /api/images?q=&offset=&limit=`` (the images one can open, uploads first);
- ``GET /api/image/<id>``: the decoded image as PNG (the pixels the labeler sees);
- ``POST /api/upload?name=FILE`` with the file as body: ``{"id", "width", "height"}``;
- ``GET /api/proposals/<id>[?run=1]``: stored proposals (``--dataset``), or MaskCut's run now with ``run=1``;
- ``POST /api/classify`` ``{"image", "box": [x0, y0, x1, y1]}`` or ``"proposal": i`` or ``"point": [x, y]`` (the
  smallest proposal holding that pixel): the region and its ranked classes.

Errors are ``{"error": message}`` with status 400 (bad request), 404 (unknown image or no proposal there) or 413.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import torch
from PIL import Image

from multilabel_imagenet import classes, images
from multilabel_imagenet.browse import overlay
from multilabel_imagenet.browse.gallery import MASK_CLASSES_SHOWN
from multilabel_imagenet.browse.source import DatasetView
from multilabel_imagenet.builder.regions import MaskCutProposer, RegionLabeler, box_mask

MAX_UPLOAD_BYTES = 32 * 2**20
KEEP_UPLOADS = 16
"""Uploaded images kept in memory; older ones are forgotten."""
KEEP_OPENED = 8
"""Images whose pixels, patch tokens and proposals stay cached."""
PAGE_LIMIT = 500
STATIC = {
    "/": ("labeler.html", "text/html; charset=utf-8"),
    "/labeler.js": ("labeler.js", "text/javascript; charset=utf-8"),
    "/labeler.css": ("labeler.css", "text/css; charset=utf-8"),
}


class AppError(Exception):
    """A request the app refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Opened:
    """An image being looked at: pixels, and on first use its PNG, patch tokens and proposals."""

    pixels: np.ndarray
    png: bytes | None = None
    tokens: torch.Tensor | None = None
    proposals: list[dict] | None = None
    masks: list[np.ndarray] = field(default_factory=list)
    source: str | None = None


class LabelingApp:
    """What the web app serves. ``records``: the images one can open; ``dataset``: stored proposals by image id;
    ``proposer``: MaskCut on request; ``top_k``: classes returned per region."""

    def __init__(
        self,
        labeler: RegionLabeler,
        records: Sequence[images.ImageRecord] = (),
        dataset: DatasetView | None = None,
        proposer: MaskCutProposer | None = None,
        top_k: int = 10,
        checkpoint_name: str = "",
    ) -> None:
        self.labeler, self.dataset, self.proposer, self.top_k = labeler, dataset, proposer, top_k
        self.checkpoint_name = checkpoint_name
        self._records = {r.image_id: r for r in records}
        self._items = [
            _searchable(r.image_id, r.path, None if r.label is None else classes.name_of(r.label))
            for r in self._records.values()
        ]
        self._uploads: OrderedDict[str, tuple[str, np.ndarray]] = OrderedDict()
        self._opened: OrderedDict[str, _Opened] = OrderedDict()
        self._lock = threading.RLock()
        self._uploaded = 0

    # ------------------------------------------------------------ images

    def info(self) -> dict:
        config = self.labeler.config
        kinds = ["dataset"] if self.dataset else []
        if self.proposer:
            kinds.append(f"MaskCut ({', '.join(c.name for c in self.proposer.configs)})")
        return {
            "checkpoint": self.checkpoint_name,
            "backbone": config.backbone,
            "input_size": config.input_size,
            "images": len(self._records),
            "proposals": " + ".join(kinds) or "none (draw boxes)",
            "maskcut": self.proposer is not None,
            "dataset": self.dataset.name if self.dataset else None,
        }

    def list_images(self, query: str = "", offset: int = 0, limit: int = 100) -> dict:
        """Uploads (newest first), then the records, whose id or path contains ``query`` (case-insensitive)."""
        if offset < 0 or not 0 < limit <= PAGE_LIMIT:
            raise AppError(HTTPStatus.BAD_REQUEST, f"offset must be >= 0 and limit in 1..{PAGE_LIMIT}")
        q = query.lower()
        with self._lock:
            uploads = [_searchable(i, name, None) for i, (name, _) in reversed(self._uploads.items())]
        hits = [item for (i, path), item in uploads + self._items if q in i or q in path]
        return {"total": len(hits), "offset": offset, "images": hits[offset : offset + limit]}

    def upload(self, data: bytes, name: str) -> dict:
        """Decode an uploaded file and keep it (at most :data:`KEEP_UPLOADS`); its id is ``upload-N``."""
        try:
            pixels = np.asarray(images.decode_image(io.BytesIO(data)))
        except images.ImageDecodeError as err:
            raise AppError(HTTPStatus.BAD_REQUEST, f"{name}: {err.reason}") from None
        with self._lock:
            self._uploaded += 1
            image_id = f"upload-{self._uploaded}"
            self._uploads[image_id] = (name, pixels)
            while len(self._uploads) > KEEP_UPLOADS:
                self._opened.pop(self._uploads.popitem(last=False)[0], None)
        return {"id": image_id, "width": int(pixels.shape[1]), "height": int(pixels.shape[0])}

    def _open(self, image_id: str) -> _Opened:
        with self._lock:
            if image_id in self._opened:
                self._opened.move_to_end(image_id)
                return self._opened[image_id]
            if image_id in self._uploads:
                pixels = self._uploads[image_id][1]
            elif image_id in self._records:
                record = self._records[image_id]
                try:
                    pixels = np.asarray(images.decode_image(record.full_path))
                except images.ImageDecodeError as err:
                    raise AppError(HTTPStatus.BAD_REQUEST, str(err)) from None
            else:
                raise AppError(HTTPStatus.NOT_FOUND, f"no image {image_id!r}")
            self._opened[image_id] = opened = _Opened(pixels)
            while len(self._opened) > KEEP_OPENED:
                self._opened.popitem(last=False)
            return opened

    def image_png(self, image_id: str) -> bytes:
        """The image as PNG, encoded once while it stays opened."""
        opened = self._open(image_id)
        if opened.png is None:
            buffer = io.BytesIO()
            Image.fromarray(opened.pixels).save(buffer, format="PNG")
            opened.png = buffer.getvalue()
        return opened.png

    # ------------------------------------------------------------ proposals

    def _stored_masks(self, image_id: str) -> list[dict] | None:
        """The dataset's proposals of ``image_id``, or None when the dataset has no row for it."""
        if self.dataset is None:
            return None
        found = self.dataset.locate("proposals", [image_id]).get(image_id)
        if found is None:
            return None
        split, row = found
        return self.dataset.dataset("proposals", split)[row]["masks"]

    def proposals(self, image_id: str, run: bool = False) -> dict:
        """The image's proposals: those of the dataset, else (``run``) MaskCut's, each with its mask as a
        coloured PNG data URL."""
        with self._lock:
            opened = self._open(image_id)
            if opened.proposals is None or (run and opened.source != "maskcut"):
                h, w = opened.pixels.shape[:2]
                if run:
                    if self.proposer is None:
                        raise AppError(HTTPStatus.BAD_REQUEST, "MaskCut is off: start the app with --maskcut PRESET")
                    found = [
                        (p.decode(), p.to_dict() | {"classes": [], "scores": []}) for p in self.proposer(opened.pixels)
                    ]
                    opened.source = "maskcut"
                else:
                    stored = (None if image_id in self._uploads else self._stored_masks(image_id)) or []
                    name = self.dataset.name if self.dataset else ""
                    found = list(zip(overlay.decode_masks(stored, h, w, name, image_id), stored, strict=True))
                    opened.source = "dataset"
                opened.masks = [m for m, _ in found]
                opened.proposals = [
                    {
                        "index": i,
                        "bbox": [float(v) for v in meta["bbox"]],
                        "area": int(meta["area"]),
                        "source": meta["source"],
                        "colour": overlay.hex_colour(i),
                        "stored": [
                            {"index": int(c), "name": classes.name_of(int(c)), "score": float(s)}
                            for c, s in zip(
                                meta["classes"][:MASK_CLASSES_SHOWN], meta["scores"][:MASK_CLASSES_SHOWN], strict=True
                            )
                        ],
                        "png": "data:image/png;base64," + base64.b64encode(overlay.mask_png(mask, i)).decode("ascii"),
                    }
                    for i, (mask, meta) in enumerate(found)
                ]
            return {
                "image": image_id,
                "source": opened.source if opened.proposals else None,
                "maskcut": self.proposer is not None,
                "proposals": opened.proposals,
            }

    # ------------------------------------------------------------ classification

    def classify(self, request: dict[str, Any]) -> dict:
        """Rank the classes of the region in ``request`` (see the module docstring)."""
        image_id = request.get("image")
        if not isinstance(image_id, str):
            raise AppError(HTTPStatus.BAD_REQUEST, "the request needs the image id as 'image'")
        kinds = [k for k in ("box", "proposal", "point") if k in request]
        if len(kinds) != 1:
            raise AppError(HTTPStatus.BAD_REQUEST, "give exactly one of 'box', 'proposal' and 'point'")
        kind = kinds[0]
        with self._lock:
            opened = self._open(image_id)
            h, w = opened.pixels.shape[:2]
            region: dict[str, Any] = {"kind": kind, "proposal": None, "box": None}
            try:
                if kind == "box":
                    box = _numbers(request["box"], 4, "box")
                    region["box"] = [min(max(v, 0.0), float(w if i % 2 == 0 else h)) for i, v in enumerate(box)]
                    mask = box_mask(region["box"], h, w)
                else:
                    index = self._pick(opened, request[kind], kind)
                    mask, region["kind"], region["proposal"] = opened.masks[index], "proposal", index
                if opened.tokens is None:
                    opened.tokens = self.labeler.tokens(opened.pixels)
                ranked = self.labeler.rank(opened.tokens, mask[None], self.top_k)[0]
            except ValueError as err:
                raise AppError(HTTPStatus.BAD_REQUEST, str(err)) from None
        ys, xs = np.nonzero(mask)
        region["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        region["pixels"] = int(mask.sum())
        return {"image": image_id, "region": region, "classes": [asdict(r) for r in ranked]}

    def _pick(self, opened: _Opened, value: Any, kind: str) -> int:
        if not opened.masks:
            raise AppError(HTTPStatus.NOT_FOUND, "this image has no proposals loaded")
        if kind == "proposal":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(opened.masks):
                raise AppError(HTTPStatus.BAD_REQUEST, f"proposal must be an index in 0..{len(opened.masks) - 1}")
            return value
        x, y = (int(v) for v in _numbers(value, 2, "point"))
        h, w = opened.pixels.shape[:2]
        holding = [i for i, m in enumerate(opened.masks) if m[y, x]] if 0 <= x < w and 0 <= y < h else []
        if not holding:
            raise AppError(HTTPStatus.NOT_FOUND, f"no proposal holds the pixel ({x}, {y})")
        areas = [p["area"] for p in opened.proposals or []]
        return min(holding, key=lambda i: areas[i])


def _searchable(image_id: str, path: str, label: str | None) -> tuple[tuple[str, str], dict]:
    """An image list entry with the lower-cased keys :meth:`LabelingApp.list_images` matches."""
    return (image_id.lower(), path.lower()), {"id": image_id, "path": path, "label": label}


def _numbers(value: Any, n: int, what: str) -> list[float]:
    if not (isinstance(value, list) and len(value) == n and all(isinstance(v, int | float) for v in value)):
        raise ValueError(f"{what} must be a list of {n} numbers, got {value!r}")
    return [float(v) for v in value]


def make_handler(app: LabelingApp) -> type[BaseHTTPRequestHandler]:
    """A request handler class serving ``app``'s page and API."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "multilabel-imagenet-label-regions"

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """Successful requests are not logged (errors still are, on stderr)."""

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
            self._send(status, json.dumps(data).encode("utf-8"), "application/json")

        def _handle(self, route: Callable[[str, dict[str, list[str]]], None]) -> None:
            url = urlsplit(self.path)
            try:
                route(url.path, parse_qs(url.query))
            except AppError as err:
                self._json({"error": str(err)}, err.status)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as err:  # answer instead of dropping the connection; the traceback goes to stderr
                self.log_error("%s", repr(err))
                self._json({"error": f"internal error: {type(err).__name__}: {err}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._handle(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._handle(self._post)

        def _get(self, path: str, query: dict[str, list[str]]) -> None:
            if path in STATIC:
                name, content_type = STATIC[path]
                body = resources.files("multilabel_imagenet.browse").joinpath("static", name).read_bytes()
                return self._send(HTTPStatus.OK, body, content_type)
            if path == "/api/info":
                return self._json(app.info())
            if path == "/api/images":
                try:
                    offset, limit = int(query.get("offset", ["0"])[0]), int(query.get("limit", ["100"])[0])
                except ValueError:
                    raise AppError(HTTPStatus.BAD_REQUEST, "offset and limit must be integers") from None
                return self._json(app.list_images(query.get("q", [""])[0], offset, limit))
            if path.startswith("/api/image/"):
                return self._send(HTTPStatus.OK, app.image_png(unquote(path[len("/api/image/") :])), "image/png")
            if path.startswith("/api/proposals/"):
                run = query.get("run", ["0"])[0] == "1"
                return self._json(app.proposals(unquote(path[len("/api/proposals/") :]), run))
            raise AppError(HTTPStatus.NOT_FOUND, f"no page {path}")

        def _post(self, path: str, query: dict[str, list[str]]) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD_BYTES:
                raise AppError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"at most {MAX_UPLOAD_BYTES} bytes per request")
            body = self.rfile.read(length)
            if path == "/api/upload":
                return self._json(app.upload(body, query.get("name", ["upload"])[0]))
            if path == "/api/classify":
                try:
                    request = json.loads(body)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise AppError(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {err}") from None
                if not isinstance(request, dict):
                    raise AppError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
                return self._json(app.classify(request))
            raise AppError(HTTPStatus.NOT_FOUND, f"no page {path}")

    return Handler


def make_server(app: LabelingApp, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``app`` bound to ``host``:``port`` (0: a free port; see ``server.server_address``)."""
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    return server


def serve(server: ThreadingHTTPServer) -> None:
    """Serve until interrupted (Ctrl-C), then release the port."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

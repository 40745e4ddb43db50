"""The HTTP service: FastAPI over one FaceAnalyzer and one face gallery per worker process.

Each worker loads the model once and opens the gallery once. The model runs on one thread and the gallery
lives on another (a SQLite connection belongs to the thread that opened it), so requests queue for them
instead of racing; uploads are decoded on the event loop's thread pool meanwhile. Several workers share
the gallery file through SQLite's WAL locking, as several ``facemtl enroll`` processes would.

Every failure answers JSON ``{"error": type, "detail": message}``: a bad image 400, a missing API key 401, an
unknown person 404, a stalled upload 408, an upload over the size limit 413 (refused before any decoding),
bad fields 422, work over the time limit or a busy gallery 503. A request that fails never stops the worker.

Concurrent /analyze requests are not gathered into batches: on the CPU, ``analyze`` over lists of 4 or 8 photos
cost as much CPU per photo as single calls (``tools/bench_serve.py`` measures both; the detector's own
measurement puts the gain at 1-3.5%), so the wait a batcher adds would buy nothing there. Re-measure on a GPU.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from facemtl import __version__
from facemtl.analyzer import FaceAnalyzer
from facemtl.draw import face_labels
from facemtl.detect.detector import FaceDetector
from facemtl.device import resolve_device
from facemtl.errors import FacemtlError, GalleryError, ImageDecodeError, InvalidInputError, WeightsError
from facemtl.gallery import Gallery
from facemtl.io import load_image
from facemtl.serve import ServeConfig
from facemtl.types import Detection, Face

__all__ = ["app_from_env", "create_app"]

log = logging.getLogger("facemtl.serve")
T = TypeVar("T")
STATIC = Path(__file__).resolve().with_name("static")


class ApiKeyError(FacemtlError):
    """A gallery-changing call came without the server's API key (or with a wrong one)."""


class UnknownPersonError(GalleryError):
    """The named person is not enrolled."""


class UploadTooLargeError(FacemtlError):
    """The request body is larger than the server accepts."""


class UploadTimeoutError(FacemtlError):
    """The client stopped sending its upload for longer than the time limit."""


class RequestTimeoutError(FacemtlError):
    """The request's work did not finish within the time limit."""


_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (ImageDecodeError, 400), (ApiKeyError, 401), (UnknownPersonError, 404), (UploadTimeoutError, 408),
    (UploadTooLargeError, 413), (InvalidInputError, 422), (RequestTimeoutError, 503), (GalleryError, 503),
    (FacemtlError, 500),
)


def error_response(exc: FacemtlError) -> JSONResponse:
    """The JSON answer for one of facemtl's typed errors, with the HTTP status its type stands for."""
    status = next(code for kind, code in _STATUS if isinstance(exc, kind))
    return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)


class _Abort(Exception):
    """Raised into the app when the upload guard stops reading a request body."""


class _UploadGuard:
    """ASGI middleware: refuse bodies over the size limit (413) before anything parses them, and uploads that
    stall longer than the timeout (408), so neither a huge nor a slow upload can hold a worker."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.limit:
            await error_response(self._too_large(declared))(scope, receive, send)
            return
        failure: list[FacemtlError] = []
        received, complete, started = 0, False, False

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if failure:
                raise _Abort
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                failure.append(UploadTimeoutError(f"no upload data for {self.timeout_s:g} s; send the whole body"))
                raise _Abort from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.limit:
                    failure.append(self._too_large(received))
                    raise _Abort
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if failure:
                return  # the app's own answer to the aborted body; ours goes out below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not failure:
                raise
        if failure and not started:
            await error_response(failure[0])(scope, receive, send)

    def _too_large(self, size: int) -> UploadTooLargeError:
        return UploadTooLargeError(f"the upload is at least {size:,} bytes; this server accepts up to "
                                   f"{self.limit:,} bytes per request")


def _declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when it sends none (chunked) or an unreadable one."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


@dataclass
class _Service:
    """One worker's state: the analyzer and the gallery, each used only from its own single thread."""

    config: ServeConfig
    analyzer: FaceAnalyzer
    gallery: Gallery
    model_thread: ThreadPoolExecutor
    store_thread: ThreadPoolExecutor

    async def on_model(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model's thread; a cancelled request drops its job if it has not started."""
        return await asyncio.wrap_future(self.model_thread.submit(fn, *args))

    async def on_store(self, fn: Callable[[Gallery], T]) -> T:
        """Run ``fn(gallery)`` on the gallery's thread (the one that opened its SQLite connection)."""
        return await asyncio.wrap_future(self.store_thread.submit(fn, self.gallery))

    async def within(self, work: Awaitable[T]) -> T:
        """Await a request's work, answering 503 when it takes longer than the time limit."""
        try:
            return await asyncio.wait_for(work, self.config.timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(f"the request took longer than {self.config.timeout_s:g} s; the server is "
                                      "busy, retry later") from None

    async def decode(self, upload: UploadFile, field: str) -> np.ndarray:
        """An uploaded photo as RGB pixels (``load_image``'s checks, the pixel limit included), off the loop."""
        data = await upload.read()
        try:
            return await asyncio.to_thread(load_image, data, max_pixels=self.config.max_pixels)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"{field} ({upload.filename})" if upload.filename else field, exc.reason) from None

    @property
    def threshold(self) -> float:
        """The model's calibrated verification threshold (cosine similarity)."""
        if self.analyzer.threshold is None:
            raise WeightsError(f"model {self.analyzer.model_id} carries no calibrated verification threshold; "
                               "serve a model written by facemtl ship")
        return float(self.analyzer.threshold)


def _build_analyzer(config: ServeConfig) -> FaceAnalyzer:
    """The analyzer a worker serves, from the same options as the other commands."""
    device = resolve_device(config.device)
    detector = FaceDetector(weights=config.detector, device=device, min_face=config.min_face)
    return FaceAnalyzer(detector=detector, model=config.model, device=device, flip=config.flip,
                        refine=config.refine)


def _service(request: Request) -> _Service:
    """The worker's state, set up when the app started (FastAPI dependency)."""
    return request.app.state.service


Service = Annotated[_Service, Depends(_service)]
Photo = Annotated[UploadFile, File(description="a photo (JPEG, PNG, WebP, ...)")]


def _require_key(service: Service, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Gallery-changing calls need the server's API key, when it has one, in the X-API-Key header."""
    expected = service.config.api_key
    if expected and not (x_api_key and hmac.compare_digest(x_api_key.encode(), expected.encode())):
        raise ApiKeyError("this call changes the gallery: send the server's API key in the X-API-Key header")


def _photo(upload: UploadFile, pixels: np.ndarray, faces: list[dict[str, Any]]) -> dict[str, Any]:
    """One photo's record, shaped like an entry of ``facemtl analyze``'s faces.json."""
    return {"file": upload.filename or "upload", "width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
            "faces": faces}


def _face_entry(face: Face, embeddings: bool, labels: int) -> dict[str, Any]:
    """``Face.to_dict()``, plus the embedding and the lines ``facemtl analyze`` draws, when asked for."""
    entry = face.to_dict()
    if embeddings and face.embedding is not None:
        entry["embedding"] = face.embedding.astype(float).tolist()
    if labels:
        entry["labels"] = face_labels(face, labels)
    return entry


def _source(upload: UploadFile) -> str:
    """The label an enrolled embedding keeps: the uploaded file's base name."""
    return Path(upload.filename or "upload").name[:200] or "upload"


router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The web page: annotate a photo, enroll, identify, list people."""
    return FileResponse(STATIC / "index.html")


@router.get("/health", summary="Model, device and gallery size")
async def health(service: Service) -> dict[str, Any]:
    """Answers while the worker is up: which model on which device, and how many faces the gallery holds."""
    people, size = await service.within(service.on_store(lambda g: (len(g.people()), len(g))))
    return {"status": "ok", "version": __version__, "model": service.analyzer.model_id,
            "device": str(service.analyzer.device), "threshold": service.analyzer.threshold,
            "gallery_size": size, "people": people}


@router.post("/analyze", summary="Every face in a photo, as facemtl analyze records it")
async def analyze(service: Service, image: Photo, embeddings: bool = False,
                  labels: Annotated[int, Query(ge=0, le=40, description="add up to N drawn lines per face")] = 0
                  ) -> dict[str, Any]:
    """The photo's faces.json record: box, score, landmarks, attributes, pose (and age) per face."""
    async def work() -> dict[str, Any]:
        pixels = await service.decode(image, "image")
        faces = (await service.on_model(service.analyzer.analyze, pixels))[0]
        return _photo(image, pixels, [_face_entry(f, embeddings, labels) for f in faces])
    return await service.within(work())


@router.post("/verify", summary="Are the largest faces of two photos the same person?")
async def verify(service: Service, image_a: Photo, image_b: Photo) -> dict[str, Any]:
    """Cosine similarity of the two largest faces against the model's calibrated threshold."""
    async def work() -> dict[str, Any]:
        pixels = await asyncio.gather(service.decode(image_a, "image_a"), service.decode(image_b, "image_b"))
        found = await service.on_model(service.analyzer.embed, list(pixels))
        for field, embedding in zip(("image_a", "image_b"), found):
            if embedding is None:
                raise InvalidInputError(f"{field}: no face found")
        similarity = float(np.dot(found[0], found[1]))
        return {"same": similarity >= service.threshold, "similarity": similarity, "threshold": service.threshold}
    return await service.within(work())


@router.post("/gallery/{name:path}", summary="Enroll a person", dependencies=[Depends(_require_key)])
async def enroll(service: Service, name: str,
                 images: Annotated[list[UploadFile], File(description="one or more photos of the person")]
                 ) -> dict[str, Any]:
    """Store the largest face of each photo under ``name``: all photos or none (one without a face: 422)."""
    async def work() -> dict[str, Any]:
        pixels = await asyncio.gather(*(service.decode(u, f"images[{k}]") for k, u in enumerate(images)))
        found = await service.on_model(service.analyzer.embed, list(pixels))
        empty = [_source(u) for u, e in zip(images, found) if e is None]
        if empty:
            raise InvalidInputError(f"no face found in {', '.join(empty)}; nothing was enrolled")
        rows, sources = np.stack(found), [_source(u) for u in images]

        def store(gallery: Gallery) -> dict[str, int]:
            gallery.enroll(name, rows, sources)
            return gallery.people()
        people = await service.on_store(store)
        stored = unicodedata.normalize("NFC", name).strip()  # the gallery's form of the name
        return {"name": stored, "enrolled": len(rows), "total": people.get(stored, 0)}
    return await service.within(work())


@router.post("/identify", summary="Who is each face in a photo?")
async def identify(service: Service, image: Photo,
                   top_k: Annotated[int, Query(ge=1, le=100, description="people listed per face")] = 5
                   ) -> dict[str, Any]:
    """Per face: the best person ("unknown" below the threshold) and the top-k people with their similarity."""
    async def work() -> dict[str, Any]:
        pixels = await service.decode(image, "image")
        faces = (await service.on_model(service.analyzer.analyze, pixels, 0))[0]  # refining leaves embeddings be
        threshold = service.threshold
        results = [] if not faces else await service.on_store(
            lambda g: g.identify(np.stack([f.embedding for f in faces]), top_k=top_k, threshold=threshold))
        entries = [{**Detection(f.box, f.score, f.landmarks5).to_dict(), "name": r.name, "similarity": r.score,
                    "matches": [{"name": m.name, "similarity": m.score, "source": m.source} for m in r.matches]}
                   for f, r in zip(faces, results)]
        return {**_photo(image, pixels, entries), "threshold": threshold}
    return await service.within(work())


@router.get("/gallery", summary="Enrolled people and their face counts")
async def people(service: Service) -> dict[str, Any]:
    """Every enrolled name, sorted, with how many faces it holds."""
    found = await service.within(service.on_store(lambda g: g.people()))
    return {"people": [{"name": n, "count": c} for n, c in found.items()], "faces": sum(found.values())}


@router.delete("/gallery/{name:path}", summary="Remove a person", dependencies=[Depends(_require_key)])
async def remove(service: Service, name: str) -> dict[str, Any]:
    """Delete every face of ``name`` (404 when the name is not enrolled)."""
    removed = await service.within(service.on_store(lambda g: g.remove(name)))
    if not removed:
        raise UnknownPersonError(f"{name!r} is not enrolled")
    return {"name": name, "removed": removed}


async def _typed_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FacemtlError)
    return error_response(exc)


async def _field_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's field checks (missing upload, bad query value) as an InvalidInputError answer."""
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return error_response(InvalidInputError(problems))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (unknown path, wrong method, unparsable form) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    name = "".join(HTTPStatus(exc.status_code).phrase.split())
    return JSONResponse({"error": name, "detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug answers 500 with no internals; the traceback goes to the server's log and the worker carries on."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "InternalError", "detail": "unexpected server error; see the server log"},
                        status_code=500)


def create_app(config: ServeConfig, analyzer: FaceAnalyzer | None = None) -> FastAPI:
    """The service as a FastAPI app; the model (unless ``analyzer`` is given) loads when the app starts."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served = analyzer or _build_analyzer(config)
        model_thread = ThreadPoolExecutor(1, thread_name_prefix="facemtl-model")
        store_thread = ThreadPoolExecutor(1, thread_name_prefix="facemtl-gallery")
        try:
            gallery = await asyncio.wrap_future(store_thread.submit(
                Gallery, config.db, served.model_id, served.model.config.embedding_dim))
            app.state.service = _Service(config, served, gallery, model_thread, store_thread)
            yield
            await asyncio.wrap_future(store_thread.submit(gallery.close))
        finally:
            model_thread.shutdown(wait=False, cancel_futures=True)
            store_thread.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="facemtl", version=__version__, lifespan=lifespan, docs_url=None,
                  description="Face detection, landmarks, attributes, verification and a face gallery.")
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-static", StaticFiles(directory=swagger_ui_path), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """The API's interactive docs, from the installed Swagger UI files (no CDN: works offline)."""
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="facemtl API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon-32x32.png")

    app.add_middleware(_UploadGuard, limit=config.max_upload_bytes, timeout_s=config.timeout_s)
    app.add_exception_handler(FacemtlError, _typed_error)
    app.add_exception_handler(RequestValidationError, _field_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    return app


def app_from_env() -> FastAPI:
    """uvicorn's app factory in each worker process: the config comes from ``$FACEMTL_SERVE_CONFIG``."""
    return create_app(ServeConfig.from_env())

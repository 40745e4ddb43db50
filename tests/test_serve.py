"""The HTTP service: every endpoint on real photos, bad uploads, limits, the API key, and the page in a browser."""
from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import socket
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
pytest.importorskip("python_multipart", reason="the [serve] extra is not installed")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

with warnings.catch_warnings():  # starlette >= 1.0 suggests httpx2 for its TestClient; httpx still works
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient  # noqa: E402

from facemtl._resources import sample_photo  # noqa: E402
from facemtl.analyzer import FaceAnalyzer  # noqa: E402
from facemtl.cli import serve as serve_command  # noqa: E402
from facemtl.draw import face_labels  # noqa: E402
from facemtl.errors import GalleryError  # noqa: E402
from facemtl.io import load_image  # noqa: E402
from facemtl.serve import CONFIG_ENV, ServeConfig  # noqa: E402
from facemtl.serve.app import _UploadGuard, app_from_env, create_app  # noqa: E402

SAMPLE = sample_photo()
LIMIT = 2 << 20  # the upload limit of the clients below: the sample photo (0.8 MB) fits


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer(device="cpu")


@pytest.fixture()
def make_client(analyzer: FaceAnalyzer, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Start the app (lifespan included) on a fresh gallery, sharing the module's analyzer; settings override."""
    with ExitStack() as stack:
        def make(**settings: Any) -> TestClient:
            config = ServeConfig(db=str(tmp_path / "faces.db"), max_upload_bytes=LIMIT, **settings)
            return stack.enter_context(TestClient(create_app(config, analyzer=analyzer)))
        yield make


@pytest.fixture()
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(scope="module")
def person(celeba_wild_dir: Path) -> list[Path]:
    """Three photos of the first celeba_wild test person."""
    folder = sorted((celeba_wild_dir / "test").iterdir())[0]
    return sorted(folder.glob("*.jpg"))[:3]


def upload(path: Path, field: str = "image") -> dict[str, tuple[str, bytes]]:
    return {field: (path.name, path.read_bytes())}


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header declares ``width`` x ``height`` pixels but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def encoded(pixels: np.ndarray, kind: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=kind)
    return out.getvalue()


def test_health_page_and_docs(client: TestClient, analyzer: FaceAnalyzer) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == analyzer.model_id and health["device"] == "cpu"
    assert health["gallery_size"] == 0 and health["threshold"] == analyzer.threshold
    page = client.get("/")
    assert page.status_code == 200 and 'id="view"' in page.text
    assert client.get("/static/app.js").status_code == 200
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-static/swagger-ui-bundle.js" in docs.text and "//cdn" not in docs.text
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200       # served from here: works offline
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/analyze", "/verify", "/identify", "/gallery", "/gallery/{name}", "/health"} <= set(paths)


def test_analyze_returns_the_faces_json_record(client: TestClient, analyzer: FaceAnalyzer) -> None:
    faces = analyzer.analyze(load_image(SAMPLE))[0]
    answer = client.post("/analyze", files=upload(SAMPLE))
    assert answer.status_code == 200
    assert answer.json() == {"file": SAMPLE.name, "width": 512, "height": 512, "faces": [f.to_dict() for f in faces]}
    rich = client.post("/analyze?embeddings=true&labels=3", files=upload(SAMPLE)).json()["faces"]
    assert len(rich) == len(faces) >= 1
    for entry, face in zip(rich, faces):
        assert np.allclose(entry["embedding"], face.embedding, atol=1e-6)
        assert entry["labels"] == face_labels(face, 3)


def test_analyze_a_celeba_wild_photo(client: TestClient, person: list[Path]) -> None:
    record = client.post("/analyze", files=upload(person[0])).json()
    width, height = Image.open(person[0]).size
    assert (record["width"], record["height"]) == (width, height) and len(record["faces"]) >= 1
    assert {"box", "score", "landmarks", "attributes", "pose"} <= set(record["faces"][0])


def test_verify(client: TestClient, analyzer: FaceAnalyzer, person: list[Path]) -> None:
    same = client.post("/verify", files={**upload(SAMPLE, "image_a"), **upload(SAMPLE, "image_b")}).json()
    assert same["same"] is True and same["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert same["threshold"] == analyzer.threshold
    other = client.post("/verify", files={**upload(SAMPLE, "image_a"), **upload(person[0], "image_b")}).json()
    assert other["similarity"] < 0.99 and other["same"] == (other["similarity"] >= other["threshold"])
    blank = {"image_a": ("grey.png", encoded(np.full((64, 64, 3), 128, np.uint8), "PNG")), **upload(SAMPLE, "image_b")}
    answer = client.post("/verify", files=blank)
    assert answer.status_code == 422 and "no face" in answer.json()["detail"]


def test_gallery_enroll_identify_list_delete(client: TestClient, person: list[Path]) -> None:
    enrolled = client.post("/gallery/Eileen Collins", files=upload(SAMPLE, "images")).json()
    assert enrolled == {"name": "Eileen Collins", "enrolled": 1, "total": 1}
    two = [("images", (p.name, p.read_bytes())) for p in person[:2]]
    assert client.post("/gallery/ Person A%2FB ", files=two).json() == {"name": "Person A/B", "enrolled": 2, "total": 2}
    assert client.get("/gallery").json() == {"people": [{"name": "Eileen Collins", "count": 1},
                                                        {"name": "Person A/B", "count": 2}], "faces": 3}
    assert client.get("/health").json()["gallery_size"] == 3

    found = client.post("/identify?top_k=1", files=upload(SAMPLE)).json()
    face = found["faces"][0]
    assert face["name"] == "Eileen Collins" and face["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert face["matches"] == [{"name": "Eileen Collins", "similarity": face["similarity"], "source": SAMPLE.name}]
    assert {"box", "score", "landmarks"} <= set(face) and found["threshold"] > 0
    again = client.post("/identify", files=upload(person[0])).json()["faces"]
    assert again and again[0]["name"] == "Person A/B" and len(again[0]["matches"]) == 2

    grey = {"images": ("grey.png", encoded(np.full((64, 64, 3), 128, np.uint8), "PNG"))}
    assert client.post("/gallery/Nobody", files=grey).status_code == 422
    assert client.post("/gallery/unknown", files=upload(SAMPLE, "images")).json()["error"] == "GalleryInputError"
    assert client.get("/gallery").json()["faces"] == 3  # neither refusal enrolled anything

    assert client.delete("/gallery/Person A%2FB").json() == {"name": "Person A/B", "removed": 2}
    gone = client.delete("/gallery/Person A%2FB")
    assert gone.status_code == 404 and gone.json()["error"] == "UnknownPersonError"
    assert [p["name"] for p in client.get("/gallery").json()["people"]] == ["Eileen Collins"]


def _truncated_jpeg() -> bytes:
    data = encoded(load_image(SAMPLE), "JPEG")
    return data[:len(data) // 2]


def _oversize_chunked(client: TestClient) -> Any:
    """An over-size multipart body sent without Content-Length: the guard must count the bytes as they arrive."""
    boundary = "facemtl-test"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="big.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + b"\0" * (LIMIT + 1) + f"\r\n--{boundary}--\r\n".encode()
    chunks = (body[start:start + (1 << 16)] for start in range(0, len(body), 1 << 16))
    return client.post("/gallery/Big", content=chunks,
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})


BAD_UPLOADS: dict[str, tuple[Callable[[TestClient], Any], int, str]] = {
    "truncated JPEG": (lambda c: c.post("/analyze", files={"image": ("cut.jpg", _truncated_jpeg())}),
                       400, "ImageDecodeError"),
    "not an image": (lambda c: c.post("/analyze", files={"image": ("x.jpg", b"%PDF-1.4 not a photo" * 20)}),
                     400, "ImageDecodeError"),
    "empty file": (lambda c: c.post("/identify", files={"image": ("empty.png", b"")}), 400, "ImageDecodeError"),
    "PNG claiming 100000x100000": (
        lambda c: c.post("/analyze", files={"image": ("bomb.png", png_claiming(100_000, 100_000))}),
        400, "ImageDecodeError"),
    "over the size limit": (lambda c: c.post("/analyze", files={"image": ("big.jpg", b"\xff" * (LIMIT + 1))}),
                            413, "UploadTooLargeError"),
    "over the size limit, chunked": (_oversize_chunked, 413, "UploadTooLargeError"),
    "missing field": (lambda c: c.post("/analyze", files={"photo": ("a.png", SAMPLE.read_bytes())}),
                      422, "InvalidInputError"),
    "no form at all": (lambda c: c.post("/verify"), 422, "InvalidInputError"),
    "bad query value": (lambda c: c.post("/identify?top_k=0", files=upload(SAMPLE)), 422, "InvalidInputError"),
    "unknown path": (lambda c: c.get("/nothing-here"), 404, "NotFound"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_requests_get_4xx_and_the_app_keeps_answering(client: TestClient, case: str) -> None:
    send, status, error = BAD_UPLOADS[case]
    answer = send(client)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error and answer.json()["detail"]
    if case.startswith("PNG claiming"):
        assert "exceeds the limit" in answer.json()["detail"]
    assert client.get("/health").status_code == 200


def test_after_bad_uploads_a_good_one_still_works(client: TestClient) -> None:
    for send, _, _ in BAD_UPLOADS.values():
        send(client)
    assert len(client.post("/analyze", files=upload(SAMPLE)).json()["faces"]) >= 1


def test_api_key_guards_only_gallery_changes(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="s3cret")
    for headers in ({}, {"X-API-Key": "wrong"}):
        refused = client.post("/gallery/Eileen", files=upload(SAMPLE, "images"), headers=headers)
        assert refused.status_code == 401 and refused.json()["error"] == "ApiKeyError"
    assert client.get("/gallery").json()["faces"] == 0
    key = {"X-API-Key": "s3cret"}
    assert client.post("/gallery/Eileen", files=upload(SAMPLE, "images"), headers=key).status_code == 200
    assert client.post("/identify", files=upload(SAMPLE)).json()["faces"][0]["name"] == "Eileen"
    assert client.post("/analyze", files=upload(SAMPLE)).status_code == 200
    assert client.delete("/gallery/Eileen").status_code == 401
    assert client.delete("/gallery/Eileen", headers=key).status_code == 200


def test_work_over_the_time_limit_answers_503_and_is_dropped(make_client: Callable[..., TestClient],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(timeout_s=0.5)
    service = client.app.state.service
    calls: list[Any] = []
    monkeypatch.setattr(service.analyzer, "analyze", lambda *args: calls.append(args))
    blocker = service.model_thread.submit(time.sleep, 2.0)  # the model thread is busy for longer than the limit
    answer = client.post("/analyze", files=upload(SAMPLE))
    assert answer.status_code == 503 and answer.json()["error"] == "RequestTimeoutError"
    blocker.result(timeout=30)
    service.model_thread.submit(lambda: None).result(timeout=30)
    assert calls == []  # the timed-out request's job was dropped from the queue, never run
    assert client.get("/gallery").status_code == 200


def _guarded(receive: Callable[[], Any], limit: int = 100, timeout_s: float = 0.05) -> list[dict[str, Any]]:
    """Run the upload guard around an app that reads the whole body; return the messages sent."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/analyze", "headers": []}
    asyncio.run(_UploadGuard(app, limit, timeout_s)(scope, receive, send))
    return sent


def test_upload_guard_answers_stalled_uploads_408_and_counts_chunked_bodies() -> None:
    async def stalls() -> dict[str, Any]:
        await asyncio.sleep(30)
        return {"type": "http.request", "body": b"", "more_body": False}
    assert _guarded(stalls)[0]["status"] == 408

    async def floods() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x" * 64, "more_body": True}
    assert _guarded(floods)[0]["status"] == 413

    async def fits() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x" * 64, "more_body": False}
    assert _guarded(fits)[0]["status"] == 200


def _serve_args(db: Path, **changes: Any) -> argparse.Namespace:
    """The Namespace facemtl's parser gives ``serve`` with its defaults."""
    values = dict(host="127.0.0.1", port=8000, db=db, workers=1, api_key=None, max_upload_mb=32.0, timeout=60.0,
                  model=None, detector=None, min_face=20.0, no_flip=False, refine=1, device="cpu", verbose=False)
    return argparse.Namespace(**{**values, **changes})


def test_run_serve_hands_uvicorn_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setenv("FACEMTL_API_KEY", "from-env")
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert serve_command.run_serve(_serve_args(tmp_path / "faces.db", workers=2, max_upload_mb=1.5)) == 0
    (app,), options = calls[0]
    assert app == serve_command.APP_FACTORY and options["factory"] is True and options["workers"] == 2
    assert (options["host"], options["port"]) == ("127.0.0.1", 8000)
    config = ServeConfig.from_env()
    assert config == ServeConfig(db=str(tmp_path / "faces.db"), api_key="from-env", device="cpu",
                                 max_upload_bytes=3 << 19)
    assert app_from_env().title == "facemtl"
    assert serve_command.config_from_args(_serve_args(tmp_path, api_key="given")).api_key == "given"


def test_run_serve_refuses_a_db_that_cannot_be_a_gallery(tmp_path: Path) -> None:
    foreign = tmp_path / "notes.db"
    foreign.write_text("not a database")
    with pytest.raises(GalleryError, match="not a face gallery"):
        serve_command.check_db(foreign)
    with pytest.raises(GalleryError, match="does not exist"):
        serve_command.check_db(tmp_path / "missing" / "faces.db")


# ---------------------------------------------------------------- the page in a real browser


@pytest.fixture()
def live_url(analyzer: FaceAnalyzer, tmp_path: Path) -> Iterator[str]:
    """The app on uvicorn in a thread, on a free 127.0.0.1 port."""
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(ServeConfig(db=str(tmp_path / "faces.db")), analyzer=analyzer)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture()
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Selenium; skipped where Debian's chromium / chromium-driver are absent."""
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium or chromedriver not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        yield session
    finally:
        session.quit()


GREEN_PIXELS = """
const c = document.getElementById('view'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 40 && d[i + 1] > 215 && d[i + 2] < 40) n++;
return n;"""


def test_page_annotates_enrolls_and_identifies(browser: Any, live_url: str, analyzer: FaceAnalyzer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = len(analyzer.analyze(load_image(SAMPLE))[0])
    wait = WebDriverWait(browser, 120)
    browser.get(live_url)
    browser.find_element(By.ID, "file").send_keys(str(SAMPLE.resolve()))
    wait.until(lambda b: b.find_element(By.ID, "view").get_attribute("data-faces") != "0"
               or "error" in b.find_element(By.ID, "status").get_attribute("class"))
    assert browser.find_element(By.ID, "view").get_attribute("data-faces") == str(expected)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#faces li")) == expected
    assert browser.execute_script(GREEN_PIXELS) > 100  # the boxes are drawn on the canvas

    browser.find_element(By.ID, "name").send_keys("Eileen Collins")
    browser.find_element(By.ID, "enroll").click()
    wait.until(lambda b: "Eileen Collins (1)" in b.find_element(By.ID, "people").text)
    assert "Enrolled 1 face(s) of Eileen Collins" in browser.find_element(By.ID, "status").text

    browser.find_element(By.ID, "identify").click()
    wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#faces li .who").text)
    assert browser.find_element(By.CSS_SELECTOR, "#faces li .who").text.startswith("Eileen Collins")
    assert "Found: Eileen Collins" in browser.find_element(By.ID, "status").text

"""Load-test ``facemtl serve`` on loopback, and check it survives bad uploads and being killed.

1. ``FaceAnalyzer.analyze`` in this process on the photos, one at a time and in lists of 4 and 8 (what a
   micro-batcher gathering concurrent requests could at best gain), photos/s and latency per call;
2. the server's POST /analyze with 1, 4 and 16 concurrent clients: photos/s, p50 and p99 latency;
3. bad uploads (truncated JPEG, not an image, a PNG declaring 100000x100000, over the size limit, missing
   field) mixed into the load: each must get a 4xx, never a 5xx, and the server must stay up;
4. 8 clients enrolling while the server process is SIGKILLed and restarted: afterwards every enrollment that
   got a 200 must be in the gallery and SQLite's integrity_check must answer ok.

Each setting runs at most --seconds (at most 60); the server is started as ``facemtl serve`` starts it (uvicorn
with the app factory) on a free 127.0.0.1 port, and no traffic leaves loopback.

    python tools/bench_serve.py [--seconds 60] [--photos 40] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch

from facemtl.analyzer import FaceAnalyzer
from facemtl.cli.serve import APP_FACTORY
from facemtl.data import data_root
from facemtl.gallery import Gallery
from facemtl.io import iter_image_files
from facemtl.serve import CONFIG_ENV, ServeConfig

HOST = "127.0.0.1"
API_KEY = "bench-key"
UPLOAD_LIMIT = 8 << 20
Photo = tuple[str, bytes]


@dataclass
class Tally:
    """Latencies of successful calls and the count of every outcome, shared by a setting's client threads."""

    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, seconds: float | None = None) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if seconds is not None:
                self.latencies.append(seconds)


def spread(files: list[Path], count: int) -> list[Photo]:
    """``count`` photos spread evenly over ``files`` (so every WIDER event is represented), as bytes."""
    picked = [files[round(i * len(files) / count)] for i in range(min(count, len(files)))]
    return [(f.name, f.read_bytes()) for f in picked]


def row(setting: str, photos: int, seconds: float, latencies: list[float], note: str = "") -> str:
    """One line of the table: photos/s over the setting's wall time, p50 and p99 latency of a call in ms."""
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000) if latencies else (float("nan"),) * 2
    return f"{setting:<34} {photos / seconds:>8.2f} {p50:>8.0f} {p99:>8.0f} {photos:>8d}  {note}"


def in_process(analyzer: FaceAnalyzer, photos: list[Photo], seconds: float, batch: int) -> str:
    """``FaceAnalyzer.analyze`` on lists of ``batch`` photos (bytes, so decoding counts as in the server).

    Also reports this process's CPU time per photo: on a shared machine it moves less than wall time."""
    analyzer.analyze([photos[0][1]])  # warm-up
    latencies, done = [], 0
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        chunk = [photos[(done + j) % len(photos)][1] for j in range(batch)]
        tick = time.perf_counter()
        analyzer.analyze(chunk)
        latencies.append(time.perf_counter() - tick)
        done += batch
    cpu_ms = (time.process_time() - cpu) / done * 1000
    return row(f"in-process analyze, lists of {batch}", done, time.perf_counter() - start, latencies,
               f"latency per call; {cpu_ms:.0f} CPU ms per photo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Server:
    """The service in its own process (uvicorn + the app factory, as ``facemtl serve`` runs it) on loopback."""

    def __init__(self, config: ServeConfig, threads: int, log: Path) -> None:
        self.config, self.port, self.log = config, free_port(), log
        self.url = f"http://{HOST}:{self.port}"
        self.env = {**os.environ, CONFIG_ENV: config.to_env(), "OMP_NUM_THREADS": str(threads)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> None:
        """Start the process and wait (bounded) until /health answers."""
        command = [sys.executable, "-m", "uvicorn", APP_FACTORY, "--factory", "--host", HOST,
                   "--port", str(self.port), "--log-level", "warning"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer within {timeout:g} s; see {self.log}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an out-of-memory kill."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        """A graceful stop (SIGTERM), SIGKILL after 30 s."""
        if self.alive():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def running(config: ServeConfig, threads: int, log: Path) -> Iterator[Server]:
    server = Server(config, threads, log)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def clients(count: int, done: Callable[[], bool], work: Callable[[httpx.Client, int, int], None]) -> float:
    """Run ``work(http, client, i)`` in ``count`` threads until ``done()``; return the wall time.

    A call in flight when ``done()`` turns true finishes (each request times out after 120 s)."""
    def loop(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            i = 0
            while not done():
                work(http, k, i)
                i += 1

    start = time.monotonic()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - start


def after(seconds: float) -> Callable[[], bool]:
    """A ``done`` test for :func:`clients` that turns true ``seconds`` from now."""
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


def http_load(server: Server, photos: list[Photo], count: int, seconds: float) -> str:
    """``count`` clients posting the photos to /analyze back to back (each starts at its own offset)."""
    tally = Tally()

    def work(http: httpx.Client, k: int, i: int) -> None:
        name, data = photos[(k * 7 + i) % len(photos)]
        tick = time.perf_counter()
        status = http.post(f"{server.url}/analyze", files={"image": (name, data)}).status_code
        tally.add(str(status), time.perf_counter() - tick if status == 200 else None)

    wall = clients(count, after(seconds), work)
    others = {k: v for k, v in tally.outcomes.items() if k != "200"}
    return row(f"HTTP /analyze, {count} client(s)", tally.outcomes["200"], wall, tally.latencies,
               f"non-200: {others}" if others else "")


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header declares ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bad_uploads(photo: bytes) -> list[tuple[str, dict[str, tuple[str, bytes]]]]:
    """(label, multipart files) for each kind of bad upload; all go to /analyze."""
    return [
        ("truncated JPEG", {"image": ("cut.jpg", photo[:len(photo) // 2])}),
        ("not an image", {"image": ("x.jpg", b"GIF89a? no. " * 50)}),
        ("PNG declaring 100000x100000", {"image": ("bomb.png", png_claiming(100_000, 100_000))}),
        ("over the size limit", {"image": ("big.jpg", b"\xff" * (UPLOAD_LIMIT + 1))}),
        ("missing field", {"photo": ("a.jpg", photo)}),
    ]


def mixed_load(server: Server, photos: list[Photo], seconds: float) -> str:
    """4 clients; every 3rd request is a bad upload. Counts statuses; checks for no 5xx and that the server is up."""
    bad = bad_uploads(photos[0][1])
    tally = Tally()

    def work(http: httpx.Client, k: int, i: int) -> None:
        kind, files = ("bad", bad[(k + i) % len(bad)][1]) if i % 3 == 2 else \
            ("good", {"image": photos[(k * 7 + i) % len(photos)]})
        try:
            tally.add(f"{kind} {http.post(f'{server.url}/analyze', files=files).status_code}")
        except httpx.TransportError as exc:
            tally.add(f"{kind} {type(exc).__name__}")

    clients(4, after(seconds), work)
    healthy = server.alive() and httpx.get(f"{server.url}/health", timeout=30).status_code == 200
    statuses = dict(sorted(tally.outcomes.items()))
    fives = sum(n for key, n in statuses.items() if key.split()[1].startswith("5"))
    bad_not_4xx = sum(n for key, n in statuses.items() if key.startswith("bad") and not key.split()[1].startswith("4"))
    return (f"bad uploads mixed into /analyze load ({seconds:g} s, 4 clients, every 3rd request bad): {statuses}; "
            f"5xx: {fives}; bad uploads without a 4xx: {bad_not_4xx}; server up and healthy after: {healthy}")


def fault_test(photos: list[Photo], seconds: float, threads: int, folder: Path, kills: int = 2) -> str:
    """8 clients enroll (one photo, a new name per call) while the server is SIGKILLed and restarted.

    Kill n comes at n/(kills+1) of ``seconds``, but only once an enrollment was acknowledged since the last
    start (a starved machine may need longer); the clients stop at ``seconds`` after one more acknowledgement.
    Every wait ends at 3 x ``seconds``."""
    db = folder / "fault.db"
    config = ServeConfig(db=str(db), device="cpu", api_key=API_KEY, max_upload_bytes=UPLOAD_LIMIT)
    server = Server(config, threads, folder / "fault-server.log")
    server.start()
    acked: list[str] = []
    tally = Tally()
    stop = threading.Event()

    def work(http: httpx.Client, k: int, i: int) -> None:
        name, data = photos[(k * 5 + i) % len(photos)]
        person = f"client{k}-{i}"
        try:
            answer = http.post(f"{server.url}/gallery/{person}", files={"images": (name, data)},
                               headers={"X-API-Key": API_KEY})
        except httpx.TransportError:
            tally.add("connection lost or refused")
            time.sleep(0.5)  # the server is down or restarting
            return
        tally.add(str(answer.status_code))
        if answer.status_code == 200:
            with tally.lock:
                acked.append(person)

    start = time.monotonic()
    cap = start + 3 * seconds

    def wait_for_progress(seen: int, not_before: float) -> None:
        while time.monotonic() < cap and (len(acked) <= seen or time.monotonic() < not_before):
            time.sleep(0.1)

    load = threading.Thread(target=clients, args=(8, stop.is_set, work))
    load.start()
    killed, seen = 0, 0
    for n in range(1, kills + 1):
        wait_for_progress(seen, start + n * seconds / (kills + 1))
        server.kill()
        server.start()
        killed, seen = killed + 1, len(acked)
    wait_for_progress(seen, start + seconds)
    stop.set()
    load.join()
    server.stop()

    with sqlite3.connect(db) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    with Gallery(db, None, None, create=False) as gallery:
        stored = gallery.people()
    missing = [p for p in acked if p not in stored]
    return (f"fault test ({time.monotonic() - start:.0f} s, 8 enrolling clients, {killed} SIGKILLs + restarts): "
            f"outcomes {dict(sorted(tally.outcomes.items()))}; acknowledged {len(acked)}, missing from the gallery "
            f"{len(missing)}, stored without a 200 (cut by a kill) {len(set(stored) - set(acked))}; "
            f"integrity_check: {integrity}")


PARTS = ("inprocess", "http", "mixed", "fault")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=data_root())
    parser.add_argument("--photos", type=int, default=40, help="WIDER val photos, cycled (default 40)")
    parser.add_argument("--seconds", type=float, default=60.0, help="per setting, at most 60 (default 60)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads here and in the server (default 1)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (default all)")
    args = parser.parse_args()
    seconds = min(args.seconds, 60.0)
    torch.set_num_threads(args.threads)
    photos = spread(iter_image_files(args.data / "widerface" / "WIDER_val" / "images"), args.photos)
    faces = iter_image_files(args.data / "celeba_wild" / "test") if (args.data / "celeba_wild").is_dir() else []
    enroll_photos = spread(faces, 40) if faces else photos

    print(f"{len(photos)} WIDER val photos, CPU, torch threads {args.threads}, up to {seconds:g} s per setting; "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    print(f"{'setting':<34} {'photos/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'photos':>8}", flush=True)
    if "inprocess" in args.parts:
        analyzer = FaceAnalyzer(device="cpu")
        for batch in (1, 4, 8):
            print(in_process(analyzer, photos, seconds, batch), flush=True)
        del analyzer
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        folder = Path(tmp)
        if {"http", "mixed"} & set(args.parts):
            config = ServeConfig(db=str(folder / "load.db"), device="cpu", max_upload_bytes=UPLOAD_LIMIT)
            with running(config, args.threads, folder / "server.log") as server:
                for count in args.clients if "http" in args.parts else []:
                    print(http_load(server, photos, count, seconds), flush=True)
                if "mixed" in args.parts:
                    print(mixed_load(server, photos, min(seconds, 20.0)), flush=True)
        if "fault" in args.parts:
            print(fault_test(enroll_photos, seconds, args.threads, folder), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()

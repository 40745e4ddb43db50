"""facemtl.gallery on real SQLite files in tmp_path: search results checked against numpy by hand, refusals that
leave foreign files untouched, two processes writing at once, and a writer killed in the middle of a transaction.

Argument problems raise GalleryInputError, which is both a GalleryError and an InvalidInputError.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from facemtl.gallery import search as gallery_search
from facemtl.errors import GalleryError, InvalidInputError
from facemtl.gallery import NO_MATCH_SCORE, UNKNOWN, Gallery, GalleryInputError, Identification, Match

MODEL = "facemtl-deepid2/0.1.0+abcdef12"
DIM = 128


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    return unit(rng.standard_normal((n, dim))).astype(np.float32)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file in `folder` with its bytes: a refused open must leave this identical (no -wal/-shm left)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def enrolled(tmp_path: Path):
    """A gallery of alice, bob and carol, 2 embeddings each, and the vectors as enrolled."""
    rng = np.random.default_rng(0)
    people = {name: random_unit(rng, 2) for name in ("alice", "bob", "carol")}
    g = Gallery(tmp_path / "faces.db", MODEL, DIM)
    for name, vecs in people.items():
        assert g.enroll(name, vecs, [f"{name}{i}.jpg" for i in range(len(vecs))]) == len(vecs)
    yield g, people
    g.close()


def by_hand(query: np.ndarray, people: dict[str, np.ndarray]) -> list[tuple[str, float, str]]:
    """Each person's best cosine and source, best first, computed directly in float64."""
    q = unit(query)
    rows = []
    for name, vecs in people.items():
        cos = unit(vecs) @ q
        i = int(np.argmax(cos))
        rows.append((name, float(cos[i]), f"{name}{i}.jpg"))
    return sorted(rows, key=lambda r: -r[1])


# ------------------------------------------------------------------ search


def test_identify_matches_hand_computed_cosines(enrolled) -> None:
    g, people = enrolled
    rng = np.random.default_rng(1)
    names = list(people)
    queries = np.stack([people[n][k] for n, k in zip(names, (0, 1, 1))]) + 0.05 * rng.standard_normal((3, DIM))
    queries *= 3.0  # identify re-normalises queries; the scale must not matter
    results = g.identify(queries.astype(np.float32), top_k=3, threshold=0.5)
    assert len(results) == 3
    for name, query, result in zip(names, queries, results):
        expected = by_hand(query, people)
        assert result.name == name == expected[0][0]
        assert result.score == result.matches[0].score
        assert [m.name for m in result.matches] == [e[0] for e in expected]
        assert [m.source for m in result.matches] == [e[2] for e in expected]
        np.testing.assert_allclose([m.score for m in result.matches], [e[1] for e in expected], atol=1e-5)
        assert result.score > 0.8
        scores = [m.score for m in result.matches]
        assert scores == sorted(scores, reverse=True)
        assert all(isinstance(m, Match) and isinstance(m.score, float) for m in result.matches)


def test_top_k_threshold_and_unknown(enrolled) -> None:
    g, people = enrolled
    rng = np.random.default_rng(2)
    query = (people["bob"][0] + 0.3 * random_unit(rng, 1)[0])[None]
    assert len(g.identify(query, top_k=1)[0].matches) == 1
    assert [m.name for m in g.identify(query, top_k=2)[0].matches][0] == "bob"
    assert len(g.identify(query, top_k=50)[0].matches) == 3  # no more than there are people

    hit = g.identify(query, top_k=3)[0]
    at = g.identify(query, top_k=3, threshold=hit.score)[0]  # a score equal to the threshold is a match
    assert at.name == "bob"
    above = g.identify(query, top_k=3, threshold=float(np.nextafter(hit.score, 2.0)))[0]
    assert above.name == UNKNOWN and above.matches == hit.matches and above.score == hit.score

    stranger = random_unit(np.random.default_rng(99), 1)  # unrelated: cosines near 0
    result = g.identify(stranger, threshold=0.5)[0]
    assert result.name == UNKNOWN
    assert [m.name for m in result.matches] == [e[0] for e in by_hand(stranger[0], people)]
    assert result.score < 0.5


def test_people_len_remove_and_cache(enrolled) -> None:
    g, people = enrolled
    assert g.people() == {"alice": 2, "bob": 2, "carol": 2}
    assert len(g) == 6
    assert g.identify(people["bob"][:1])[0].name == "bob"  # loads the search cache
    assert g.remove("bob") == 2
    assert g.remove("bob") == 0
    assert g.people() == {"alice": 2, "carol": 2} and len(g) == 4
    result = g.identify(people["bob"][:1], top_k=5)[0]  # the cache must see our own delete
    assert "bob" not in [m.name for m in result.matches]
    assert g.enroll("  alice ", people["bob"][:1], ["extra.jpg"]) == 1  # names are stripped: adds to alice
    assert g.people() == {"alice": 3, "carol": 2}
    assert g.identify(people["bob"][:1])[0].matches[0] == Match("alice", pytest.approx(1.0, abs=1e-6), "extra.jpg")


def test_other_connection_commits_are_seen(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a, b = random_unit(rng, 1), random_unit(rng, 1)
    with Gallery(tmp_path / "faces.db", MODEL, DIM) as g1, Gallery(tmp_path / "faces.db", MODEL, DIM) as g2:
        g1.enroll("ann", a, ["a.jpg"])
        assert g1.identify(b)[0].matches[0].name == "ann"  # cached now
        g2.enroll("ben", b, ["b.jpg"])
        assert g1.identify(b)[0].name == "ben"
        assert len(g1) == 2


def test_empty_gallery_and_empty_query(tmp_path: Path) -> None:
    with Gallery(tmp_path / "faces.db", MODEL, DIM) as g:
        assert len(g) == 0 and g.people() == {}
        queries = random_unit(np.random.default_rng(4), 2)
        assert g.identify(queries) == [Identification(UNKNOWN, NO_MATCH_SCORE, [])] * 2
        assert g.identify(np.zeros((0, DIM), np.float32)) == []


def test_reopen_keeps_data_and_stores_unit_float32(tmp_path: Path) -> None:
    path = tmp_path / "faces.db"
    vec = np.arange(1, DIM + 1, dtype=np.float64)[None] * 7.0  # float64, not unit length
    with Gallery(path, MODEL, DIM) as g:
        g.enroll("dora", vec, [Path("photos/dora.png")])
        first = g.identify(vec)
    with Gallery(path, MODEL, DIM, create=False) as g:
        assert g.identify(vec) == first
        assert first[0].matches == [Match("dora", pytest.approx(1.0, abs=1e-6), "photos/dora.png")]
    with Gallery(path, None, None, create=False) as g:  # no model needed to list people
        assert (g.model_version, g.dim) == (MODEL, DIM)
        assert g.people() == {"dora": 1}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x464D544C  # "FMTL"
        (blob, model), = conn.execute("SELECT vector, model_version FROM embeddings").fetchall()
        (schema, meta_model, meta_dim), = conn.execute("SELECT schema_version, model_version, dim FROM meta")
    stored = np.frombuffer(blob, "<f4")
    np.testing.assert_allclose(stored, unit(vec[0]), rtol=1e-6)
    assert (model, schema, meta_model, meta_dim) == (MODEL, 1, MODEL, DIM)


# ------------------------------------------------------------------ refusals that change nothing


def test_other_model_or_dim_is_refused_and_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "faces.db"
    with Gallery(path, MODEL, DIM) as g:
        g.enroll("erin", random_unit(np.random.default_rng(5), 2), ["e0.jpg", "e1.jpg"])
    before = snapshot(tmp_path)
    other = "facemtl-resnet/0.2.0+12345678"
    with pytest.raises(GalleryError) as err:
        Gallery(path, other, DIM)
    message = str(err.value)
    assert f"faces.db holds embeddings of model {MODEL}; this model is {other}" in message
    assert "re-enroll" in message and "--db" in message
    with pytest.raises(GalleryError, match="256-d"):
        Gallery(path, MODEL, 256, create=False)
    assert snapshot(tmp_path) == before


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "faces.db"
    Gallery(path, MODEL, DIM).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET schema_version = 99")
    conn.close()
    with pytest.raises(GalleryError, match="newer facemtl"):
        Gallery(path, MODEL, DIM)


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["text", "png", "short", "corrupt_sqlite"])
@pytest.mark.parametrize("create", [True, False])
def test_non_gallery_file_is_refused_and_unchanged(tmp_path: Path, kind: str, create: bool) -> None:
    content = {
        "text": b"alice,bob\ncarol\n",
        "png": _png_bytes(),
        "short": b"S",
        "corrupt_sqlite": b"SQLite format 3\x00" + bytes(range(256)) * 20,
    }[kind]
    path = tmp_path / "faces.db"
    path.write_bytes(content)
    with pytest.raises(GalleryError, match="faces.db"):
        Gallery(path, MODEL, DIM, create=create)
    assert snapshot(tmp_path) == {"faces.db": content}


@pytest.mark.parametrize("schema", [
    ["CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)", "INSERT INTO photos (path) VALUES ('x.jpg')"],
    ["CREATE TABLE meta (key TEXT, value TEXT)", "CREATE TABLE embeddings (id INTEGER)",
     "INSERT INTO meta VALUES ('owner', 'someone else')"],
])
def test_foreign_sqlite_database_is_refused_and_unchanged(tmp_path: Path, schema: list[str]) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    for statement in schema:
        conn.execute(statement)
    conn.commit()
    conn.close()
    before = snapshot(tmp_path)
    with pytest.raises(GalleryError, match="not a facemtl face gallery"):
        Gallery(path, MODEL, DIM)
    assert snapshot(tmp_path) == before


def test_create_false_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="no face gallery"):
        Gallery(tmp_path / "faces.db", MODEL, DIM, create=False)
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(GalleryError, match="empty"):
        Gallery(tmp_path / "empty.db", MODEL, DIM, create=False)
    with pytest.raises(GalleryError, match="does not exist"):
        Gallery(tmp_path / "no" / "such" / "faces.db", MODEL, DIM)
    with pytest.raises(GalleryError, match="folder"):
        Gallery(tmp_path, MODEL, DIM)
    assert snapshot(tmp_path) == {"empty.db": b""}


def test_closed_gallery_raises(tmp_path: Path) -> None:
    g = Gallery(tmp_path / "faces.db", MODEL, DIM)
    g.close()
    g.close()
    with pytest.raises(GalleryError, match="closed"):
        len(g)


# ------------------------------------------------------------------ input validation


def _bad_rows() -> dict[str, np.ndarray | object]:
    good = random_unit(np.random.default_rng(6), 3)
    nan, inf, zero = good.copy(), good.copy(), good.copy()
    nan[1, 5] = np.nan
    inf[2, 0] = np.inf
    zero[1] = 0.0
    return {
        "nan": nan, "inf": inf, "zero_row": zero, "wrong_dim": good[:, :64], "one_d": good[0],
        "int_dtype": np.ones((3, DIM), np.int64), "no_rows": good[:0], "list": good.tolist(),
    }


@pytest.mark.parametrize("case", list(_bad_rows()))
def test_enroll_refuses_bad_embeddings(tmp_path: Path, case: str) -> None:
    bad = _bad_rows()[case]
    with Gallery(tmp_path / "faces.db", MODEL, DIM) as g:
        n = len(bad) if hasattr(bad, "__len__") else 0
        with pytest.raises(GalleryInputError) as err:
            g.enroll("fred", bad, [f"f{i}.jpg" for i in range(n)])
        assert isinstance(err.value, GalleryError) and isinstance(err.value, InvalidInputError)
        assert len(g) == 0  # nothing of a refused call is stored


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "tab\there", "unknown", "Unknown", None, 7])
def test_enroll_refuses_bad_names(tmp_path: Path, name: object) -> None:
    with Gallery(tmp_path / "faces.db", MODEL, DIM) as g:
        with pytest.raises(GalleryInputError):
            g.enroll(name, random_unit(np.random.default_rng(7), 1), ["x.jpg"])  # type: ignore[arg-type]
        assert len(g) == 0


@pytest.mark.parametrize("sources", [["a.jpg"], ["a", "b", "c"], "ab", ["a.jpg", 3]])
def test_enroll_refuses_bad_sources(tmp_path: Path, sources: object) -> None:
    with Gallery(tmp_path / "faces.db", MODEL, DIM) as g:
        with pytest.raises(GalleryInputError):
            g.enroll("gus", random_unit(np.random.default_rng(8), 2), sources)  # type: ignore[arg-type]
        assert len(g) == 0


@pytest.mark.parametrize("kwargs", [
    {"top_k": 0}, {"top_k": True}, {"top_k": 2.0}, {"threshold": float("nan")}, {"threshold": "0.5"},
])
def test_identify_refuses_bad_arguments(enrolled, kwargs: dict) -> None:
    g, people = enrolled
    with pytest.raises(GalleryInputError):
        g.identify(people["alice"][:1], **kwargs)
    for bad in ("nan", "zero_row", "wrong_dim", "one_d"):
        with pytest.raises(GalleryInputError):
            g.identify(_bad_rows()[bad])


# ------------------------------------------------------------------ optional FAISS path


class _FakeIndexFlatIP:
    """The two faiss.IndexFlatIP methods the gallery uses, done in numpy (exact inner product, best first)."""

    def __init__(self, dim: int) -> None:
        self.rows = np.zeros((0, dim), np.float32)
        self.searched_k: list[int] = []

    def add(self, x: np.ndarray) -> None:
        self.rows = np.concatenate([self.rows, x])

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.searched_k.append(k)
        scores = q @ self.rows.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), order.astype(np.int64)


def _crowded_gallery(path: Path) -> tuple[Gallery, np.ndarray]:
    """300 people; one of them with 400 near-copies of the query, so the nearest rows cover few people."""
    rng = np.random.default_rng(10)
    g = Gallery(path, MODEL, DIM)
    for i in range(300):
        g.enroll(f"p{i:03d}", random_unit(rng, 2), ["a.jpg", "b.jpg"])
    queries = random_unit(rng, 4)
    crowd = queries[0] + 0.01 * rng.standard_normal((400, DIM))
    g.enroll("crowd", crowd.astype(np.float32), [f"c{i}.jpg" for i in range(400)])
    return g, queries


def test_faiss_path_gives_the_numpy_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g, queries = _crowded_gallery(tmp_path / "faces.db")
    with g:
        expected = g.identify(queries, top_k=20, threshold=0.3)
        assert expected[0].name == "crowd"
        made: list[_FakeIndexFlatIP] = []

        def make(dim: int) -> _FakeIndexFlatIP:
            made.append(_FakeIndexFlatIP(dim))
            return made[-1]

        monkeypatch.setattr(gallery_search, "import_faiss", lambda: SimpleNamespace(IndexFlatIP=make))
        monkeypatch.setattr(gallery_search, "faiss_min_rows", 0)
        assert g.identify(queries, top_k=20, threshold=0.3) == expected
        assert len(made) == 1 and made[0].searched_k[0] < made[0].searched_k[-1]  # k had to grow for the crowd
        assert g.identify(queries, top_k=20, threshold=0.3) == expected
        assert len(made) == 1  # the index is cached with the matrix


def test_real_faiss_gives_the_numpy_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    g, queries = _crowded_gallery(tmp_path / "faces.db")
    with g:
        expected = g.identify(queries, top_k=20)
        monkeypatch.setattr(gallery_search, "faiss_min_rows", 0)
        assert g.identify(queries, top_k=20) == expected


# ------------------------------------------------------------------ processes


def _enroll_worker(path: str, tag: str, calls: int, rows: int, barrier) -> None:
    """Child process: open its own gallery when the other child does, then enroll `calls` times."""
    rng = np.random.default_rng(ord(tag))
    barrier.wait(60)
    with Gallery(path, MODEL, DIM, timeout=60) as g:
        for i in range(calls):
            g.enroll(f"{tag}{i % 5}", random_unit(rng, rows), [f"{tag}_call{i}_row{j}" for j in range(rows)])
            if i % 20 == 0:
                assert len(g.identify(random_unit(rng, 1))[0].matches) >= 1


def test_two_processes_enroll_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "faces.db")  # not created yet: both children race to create it too
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    calls, rows = 200, 1
    procs = [ctx.Process(target=_enroll_worker, args=(path, tag, calls, rows, barrier)) for tag in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0], "a child failed; its traceback is in the captured stderr"
    with Gallery(path, MODEL, DIM, create=False) as g:
        assert len(g) == 2 * calls * rows
        assert g.people() == {f"{t}{i}": calls * rows // 5 for t in "xy" for i in range(5)}
    with sqlite3.connect(path) as conn:
        sources = {s for (s,) in conn.execute("SELECT source FROM embeddings")}
    conn.close()
    assert sources == {f"{t}_call{i}_row{j}" for t in "xy" for i in range(calls) for j in range(rows)}


def _uncommitted_wal_frames(wal: Path) -> int:
    """Frames of the current WAL generation written after its last commit frame (the WAL format of sqlite.org)."""
    data = wal.read_bytes()
    page_size = int.from_bytes(data[8:12], "big")
    salts = data[16:24]
    frames = []
    for offset in range(32, len(data) - page_size - 24 + 1, page_size + 24):
        header = data[offset:offset + 24]
        if header[8:16] != salts:
            break  # a frame left over from an earlier generation: the log ends here
        frames.append(int.from_bytes(header[4:8], "big") != 0)  # non-zero "db size" marks a commit frame
    return len(frames) - 1 - max(i for i, commit in enumerate(frames) if commit)


def _enroll_until_hung(path: str, rows: int, hang_from_call: int, hung) -> None:
    """Child process: enroll call after call; from `hang_from_call` on, freeze inside a statement (to be killed)."""
    rng = np.random.default_rng(11)
    with Gallery(path, MODEL, DIM) as g:
        conn = g._conn
        assert conn is not None
        conn.execute("PRAGMA cache_size=4")  # a tiny page cache: uncommitted pages spill into the -wal file
        ticks = 0

        def freeze() -> int:
            nonlocal ticks
            ticks += 1
            if ticks == 40:
                hung.set()
                time.sleep(600)
            return 0

        for call in range(10_000):
            if call == hang_from_call:
                conn.set_progress_handler(freeze, 200)
            g.enroll(f"p{call % 7}", random_unit(rng, rows), [f"call{call}_row{j}" for j in range(rows)])


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_writer_leaves_whole_calls_only(tmp_path: Path) -> None:
    path = str(tmp_path / "faces.db")
    rows, hang_from_call = 150, 5
    ctx = multiprocessing.get_context("spawn")
    hung = ctx.Event()
    child = ctx.Process(target=_enroll_until_hung, args=(path, rows, hang_from_call, hung))
    child.start()
    try:
        assert hung.wait(120), "the child never reached the frozen transaction"
        with Gallery(path, MODEL, DIM, create=False) as g:
            committed = len(g)  # readers are not blocked by the open write transaction
        assert committed >= hang_from_call * rows and committed % rows == 0
        # the frozen call's pages already spilled into the -wal file, without a commit frame
        assert _uncommitted_wal_frames(Path(path + "-wal")) > 0
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
            child.join(30)
    assert child.exitcode == -signal.SIGKILL

    with Gallery(path, MODEL, DIM, create=False) as g:
        assert len(g) == committed
        g.enroll("after", random_unit(np.random.default_rng(12), 1), ["after.jpg"])  # the write lock was freed
        assert len(g) == committed + 1
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        sources = [s for (s,) in conn.execute("SELECT source FROM embeddings WHERE name != 'after'")]
    finally:
        conn.close()
    per_call = Counter(s.split("_")[0] for s in sources)
    assert set(per_call.values()) == {rows}  # every stored call is complete ...
    assert set(per_call) == {f"call{i}" for i in range(committed // rows)}  # ... and they are calls 0..m-1

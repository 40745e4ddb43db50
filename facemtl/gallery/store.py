"""The enrolled-faces database: embeddings of named people in one SQLite file (searched by ``search``).

One gallery file holds embeddings of exactly one model (``meta.model_version``) and one dimension; opening it
with another model is refused, because cosine scores between two models' embeddings mean nothing.

Storage is the stdlib ``sqlite3`` in WAL mode with a busy timeout, so several processes may enroll and identify
at once: writers queue behind each other instead of failing, readers never wait. Every :meth:`Gallery.enroll`
call is one transaction, so a process killed mid-call leaves all or none of that call's rows. While a gallery
is open, or after a crash, recent commits can live in the ``faces.db-wal`` file beside the database: copy or
move the database only while no process has it open, and never delete the ``-wal`` file by hand.

Errors: every failure raises :class:`~facemtl.errors.GalleryError`. A bad argument (array shape, dtype, NaN,
zero vector, name, ``top_k``...) raises :class:`GalleryInputError`, which is both a ``GalleryError`` and an
:class:`~facemtl.errors.InvalidInputError`, so either ``except`` catches it.
"""
from __future__ import annotations

import math
import os
import sqlite3
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GalleryError, InvalidInputError
from .search import Identification, Index, find

__all__ = ["SCHEMA_VERSION", "UNKNOWN", "NO_MATCH_SCORE", "Gallery", "GalleryInputError", "Identification"]

SCHEMA_VERSION = 1
UNKNOWN = "unknown"  # the name of a query below the threshold; refused as a person's name
NO_MATCH_SCORE = -1.0  # Identification.score when the gallery is empty: the lowest cosine there is

_SQLITE_MAGIC = b"SQLite format 3\x00"
_APPLICATION_ID = 0x464D544C  # "FMTL" in the SQLite header: marks the file as a facemtl gallery
_SCHEMA = (
    "CREATE TABLE meta (schema_version INTEGER NOT NULL, model_version TEXT NOT NULL, dim INTEGER NOT NULL,"
    " created TEXT NOT NULL)",
    "CREATE TABLE embeddings (id INTEGER PRIMARY KEY, name TEXT NOT NULL, source TEXT NOT NULL,"
    " model_version TEXT NOT NULL, vector BLOB NOT NULL, created TEXT)",
    "CREATE INDEX embeddings_name ON embeddings (name)",
)


class GalleryInputError(GalleryError, InvalidInputError):
    """An argument to a :class:`Gallery` method is invalid (shape, dtype, non-finite or zero values, name...)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_name(name: object) -> str:
    """Validate a person's name; return it NFC-normalised and stripped (so "José" typed either way is one name)."""
    if not isinstance(name, str):
        raise GalleryInputError(f"name must be a str; got {type(name).__name__}")
    clean = unicodedata.normalize("NFC", name).strip()
    if not clean:
        raise GalleryInputError("name is empty; give the person's name, e.g. 'Ada Lovelace'")
    bad = sorted({c for c in clean if unicodedata.category(c) in ("Cc", "Zl", "Zp")})
    if bad:
        raise GalleryInputError(f"name {clean!r} contains control characters {bad!r}; use printable characters only")
    if clean.casefold() == UNKNOWN:
        raise GalleryInputError(f"{clean!r} is reserved for faces below the threshold; choose another name")
    return clean


def _row_list(rows: np.ndarray) -> str:
    idx = [int(i) for i in rows[:5]]
    return f"{idx}{' ...' if len(rows) > 5 else ''}"


def _unit_rows(x: object, dim: int, what: str, *, allow_empty: bool = False) -> np.ndarray:
    """Check ``x`` is a finite (n, dim) float array without zero rows; return its rows scaled to unit length."""
    if not isinstance(x, np.ndarray):
        hint = "; convert a torch tensor with .detach().cpu().numpy()" if hasattr(x, "detach") else ""
        raise GalleryInputError(f"{what} must be a numpy array of shape (n, {dim}); got {type(x).__name__}{hint}")
    if x.ndim != 2 or x.shape[1] != dim:
        hint = "; for a single embedding pass x[None]" if x.ndim == 1 and x.shape[0] == dim else ""
        raise GalleryInputError(f"{what} must have shape (n, {dim}) for this gallery; got {x.shape}{hint}")
    if not np.issubdtype(x.dtype, np.floating):
        raise GalleryInputError(f"{what} must be a floating-point array; got dtype {x.dtype}")
    if x.shape[0] == 0:
        if allow_empty:
            return np.zeros((0, dim), np.float32)
        raise GalleryInputError(f"{what} holds no rows; pass at least one embedding")
    x64 = x.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(x64).all(axis=1))
    if bad.size:
        raise GalleryInputError(f"{what} rows {_row_list(bad)} contain NaN or infinite values")
    peak = np.abs(x64).max(axis=1)
    bad = np.flatnonzero(peak == 0)
    if bad.size:
        raise GalleryInputError(
            f"{what} rows {_row_list(bad)} are all zeros; a face embedding has a direction — check the model output"
        )
    x64 /= peak[:, None]  # scale first so the norm cannot overflow
    x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
    return np.ascontiguousarray(x64, dtype=np.float32)


def _check_top_k(top_k: object) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise GalleryInputError(f"top_k must be a positive int; got {top_k!r}")
    return int(top_k)


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(threshold)):
        raise GalleryInputError(f"threshold must be a finite number (a cosine, usually in 0..1); got {threshold!r}")
    return float(threshold)


class Gallery:
    """Named face embeddings of one model in a SQLite file; enroll, identify, list and remove people.

    ``model_version`` and ``dim`` must match what the file was created with (pass None for either to accept what
    the file holds, e.g. to list or remove people without loading a model; creating a file needs both).
    ``create=False`` opens only an existing gallery and never creates or changes a file on open. ``timeout`` is
    how long (seconds) a write waits for another process's write to finish before failing.

    A Gallery holds one SQLite connection: use it from the thread that opened it, and open one per process.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        model_version: str | None,
        dim: int | None,
        *,
        create: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self._conn: sqlite3.Connection | None = None
        if not isinstance(path, (str, os.PathLike)):
            raise GalleryInputError(f"path must be a str or os.PathLike; got {type(path).__name__}")
        self.path = Path(os.fspath(path))
        if model_version is not None and (not isinstance(model_version, str) or not model_version.strip()):
            raise GalleryInputError(f"model_version must be a non-empty str; got {model_version!r}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1):
            raise GalleryInputError(f"dim must be a positive int; got {dim!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < math.inf:
            raise GalleryInputError(f"timeout must be a non-negative number of seconds; got {timeout!r}")
        self.timeout = float(timeout)
        self._index: Index | None = None
        self._writes = 0  # our own commits: PRAGMA data_version only counts other connections' commits

        self._conn = self._connect(model_version, dim, create)
        try:
            meta = self._inspect()
            if meta is None:
                if not create:
                    raise GalleryError(f"{self.path} is an empty database, not a face gallery; enroll someone first")
                if model_version is None or dim is None:
                    raise GalleryError(f"{self.path} is empty; creating a gallery needs the model version and dim")
                self._create(model_version, int(dim))
                meta = self._inspect()
                assert meta is not None
            self.model_version, self.dim, self.created = self._check_meta(meta, model_version, dim)
            with self._sql_errors("setting up the connection"):
                self.journal_mode = self._switch_to_wal()
                # NORMAL is safe in WAL mode: a killed process never loses a commit (a power cut may lose the last)
                self._conn.execute(f"PRAGMA synchronous={'NORMAL' if self.journal_mode == 'wal' else 'FULL'}")
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- opening

    def _connect(self, model_version: str | None, dim: int | None, create: bool) -> sqlite3.Connection:
        """Check the file before SQLite touches it (a foreign file is never opened), then connect."""
        path = self.path
        if path.is_dir():
            raise GalleryError(f"{path} is a folder; pass a database file such as {path / 'faces.db'}")
        if path.exists():
            try:
                with open(path, "rb") as f:
                    header = f.read(len(_SQLITE_MAGIC))
            except OSError as exc:
                raise GalleryError(f"cannot read {path}: {exc.strerror or exc}") from exc
            if header and header != _SQLITE_MAGIC:
                raise GalleryError(
                    f"{path} is not a face gallery (not a SQLite database); pass another --db path or move it away"
                )
            if not header and not create:
                raise GalleryError(f"{path} is an empty file, not a face gallery; enroll someone first")
        elif not create:
            raise GalleryError(f"no face gallery at {path}; enroll someone first (facemtl enroll NAME PHOTO --db ...)")
        elif not path.parent.is_dir():
            raise GalleryError(f"cannot create {path}: the folder {path.parent} does not exist")
        elif model_version is None or dim is None:
            raise GalleryError(f"no face gallery at {path}; creating one needs the model version and dim")
        uri = f"{path.absolute().as_uri()}?mode={'rwc' if create else 'rw'}"
        try:
            return sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise GalleryError(f"cannot open {path}: {exc}") from exc

    def _inspect(self) -> dict[str, Any] | None:
        """Read the meta row without writing anything; None for an empty database, GalleryError if not ours."""
        conn = self._require_open()
        not_ours = f"{self.path} is a SQLite database but not a facemtl face gallery; pass another --db path"
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            objects = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
        except sqlite3.OperationalError as exc:
            raise GalleryError(f"cannot read {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path} is damaged or not a SQLite database ({exc})") from exc
        if not objects and app_id in (0, _APPLICATION_ID):
            return None
        tables = {name for kind, name in objects if kind == "table"}
        if app_id not in (0, _APPLICATION_ID) or not {"meta", "embeddings"} <= tables:
            raise GalleryError(not_ours)
        try:
            cur = conn.execute("SELECT * FROM meta")
            rows = cur.fetchall()
            columns = [d[0] for d in cur.description]
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"cannot read the meta table of {self.path}: {exc}") from exc
        if not {"schema_version", "model_version", "dim"} <= set(columns):
            raise GalleryError(not_ours)
        if len(rows) != 1:
            raise GalleryError(
                f"{self.path} is damaged: its meta table holds {len(rows)} rows instead of 1; enroll into a new --db"
            )
        return dict(zip(columns, rows[0]))

    def _create(self, model_version: str, dim: int) -> None:
        """Create the schema in one transaction; if another process created it meanwhile, keep theirs."""
        conn = self._require_open()
        with self._sql_errors("creating the gallery"):
            self._switch_to_wal()
            with self._transaction():
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    return  # created by another process while we waited for the write lock
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (schema_version, model_version, dim, created) VALUES (?, ?, ?, ?)",
                    (SCHEMA_VERSION, model_version, dim, _now()),
                )
                conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")

    def _switch_to_wal(self) -> str:
        """Set WAL journal mode; return the mode in force (an odd filesystem may refuse WAL: then we still work).

        Changing the journal mode needs an exclusive lock, and when another connection holds a lock SQLite
        answers "database is locked" at once instead of calling the busy handler (two processes creating
        the same new gallery hit this), so retry here until the timeout.
        """
        conn = self._require_open()
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as exc:
                if not ("locked" in str(exc) or "busy" in str(exc)) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.05)

    def _check_meta(self, meta: dict[str, Any], model_version: str | None, dim: int | None) -> tuple[str, int, str]:
        schema, stored_model, stored_dim = meta["schema_version"], meta["model_version"], meta["dim"]
        if not isinstance(schema, int) or not isinstance(stored_model, str) or not isinstance(stored_dim, int) \
                or schema < 1 or stored_dim < 1:
            raise GalleryError(f"{self.path}: the meta table is damaged (schema {schema!r}, dim {stored_dim!r})")
        if schema > SCHEMA_VERSION:
            raise GalleryError(
                f"{self.path} was written by a newer facemtl (gallery schema {schema}; this one reads up to "
                f"{SCHEMA_VERSION}); upgrade facemtl to use it"
            )
        name = self.path.name
        if model_version is not None and stored_model != model_version:
            raise GalleryError(
                f"{name} holds embeddings of model {stored_model}; this model is {model_version} — "
                "re-enroll with this model or use a separate --db"
            )
        if dim is not None and stored_dim != dim:
            raise GalleryError(
                f"{name} holds {stored_dim}-d embeddings (model {stored_model}); this model makes {dim}-d ones — "
                "re-enroll with this model or use a separate --db"
            )
        return stored_model, stored_dim, str(meta.get("created") or "")

    # ---------------------------------------------------------------- plumbing

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise GalleryError(f"the gallery {self.path} is closed; open it again")
        return self._conn

    @contextmanager
    def _sql_errors(self, action: str) -> Iterator[None]:
        """Turn sqlite3 errors into GalleryError with what we were doing and what to try."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise GalleryError(
                    f"{self.path} is locked by another process (waited up to {self.timeout:g} s) while {action}; "
                    "retry when it finishes, or pass a longer timeout"
                ) from exc
            raise GalleryError(f"{action} failed on {self.path}: {text}") from exc
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{action} failed: {self.path} is damaged ({exc})") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: take the write lock up front (waiting up to the timeout), commit or roll back."""
        conn = self._require_open()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error says more; SQLite rolls back on close anyway
            raise
        finally:
            self._writes += 1

    # ---------------------------------------------------------------- public API

    def enroll(self, name: str, embeddings: np.ndarray, sources: Sequence[str]) -> int:
        """Add the rows of ``embeddings`` (n, dim) under ``name``, one source label per row; return n.

        Rows are re-normalised to unit length. All rows go in one transaction: all are stored or none.
        The name is NFC-normalised and stripped; enrolling an existing name adds to that person.
        """
        conn = self._require_open()
        name = _check_name(name)
        rows = _unit_rows(embeddings, self.dim, "embeddings")
        if isinstance(sources, (str, bytes, os.PathLike)) or not isinstance(sources, Sequence):
            raise GalleryInputError(
                f"sources must be a list of str, one per embedding row; got {type(sources).__name__}"
            )
        labels = [os.fspath(s) if isinstance(s, os.PathLike) else s for s in sources]
        if any(not isinstance(s, str) for s in labels):
            raise GalleryInputError("sources must all be str (the file each embedding came from)")
        if len(labels) != len(rows):
            raise GalleryInputError(
                f"got {len(rows)} embedding rows but {len(labels)} sources; pass one source per row"
            )
        blobs = [row.astype("<f4").tobytes() for row in rows]
        created = _now()
        with self._sql_errors(f"enrolling {name!r}"), self._transaction():
            conn.executemany(
                "INSERT INTO embeddings (name, source, model_version, vector, created) VALUES (?, ?, ?, ?, ?)",
                [(name, src, self.model_version, blob, created) for src, blob in zip(labels, blobs)],
            )
        return len(rows)

    def identify(self, embeddings: np.ndarray, top_k: int = 5, threshold: float = 0.5) -> list[Identification]:
        """For each query row, the ``top_k`` people ranked by their best-matching embedding (exact cosine).

        ``name`` is ``"unknown"`` when the best score is below ``threshold``; the matches are returned anyway.
        An empty gallery answers "unknown" with no matches; a (0, dim) query gives an empty list.
        """
        self._require_open()
        top_k, threshold = _check_top_k(top_k), _check_threshold(threshold)
        queries = _unit_rows(embeddings, self.dim, "query embeddings", allow_empty=True)
        if not len(queries):
            return []
        index = self._load()
        if not len(index.names):
            return [Identification(UNKNOWN, NO_MATCH_SCORE, []) for _ in range(len(queries))]
        results = []
        for matches in find(index, queries, min(top_k, len(index.names))):
            best = matches[0]
            results.append(Identification(best.name if best.score >= threshold else UNKNOWN, best.score, matches))
        return results

    def people(self) -> dict[str, int]:
        """Every enrolled name (sorted) with its number of embeddings."""
        conn = self._require_open()
        with self._sql_errors("listing people"):
            rows = conn.execute("SELECT name, count(*) FROM embeddings GROUP BY name ORDER BY name").fetchall()
        return {name: int(n) for name, n in rows}

    def remove(self, name: str) -> int:
        """Delete every embedding of ``name``; return how many were deleted (0 if the name is not enrolled)."""
        conn = self._require_open()
        name = _check_name(name)
        with self._sql_errors(f"removing {name!r}"), self._transaction():
            deleted = conn.execute("DELETE FROM embeddings WHERE name = ?", (name,)).rowcount
        return int(deleted)

    def __len__(self) -> int:
        conn = self._require_open()
        with self._sql_errors("counting embeddings"):
            return int(conn.execute("SELECT count(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        """Close the connection (idempotent). The last process to close a gallery folds the -wal file back in."""
        conn, self._conn, self._index = self._conn, None, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"model {self.model_version}, dim {self.dim}"
        return f"Gallery({str(self.path)!r}, {state})"

    # ---------------------------------------------------------------- search

    def _load(self) -> Index:
        """The in-memory index, reloaded only when this or another connection has committed since."""
        conn = self._require_open()
        with self._sql_errors("loading the gallery"):
            # read the version before the rows: a commit in between only causes one extra reload later
            key = (int(conn.execute("PRAGMA data_version").fetchone()[0]), self._writes)
            if self._index is not None and self._index.key == key:
                return self._index
            rows = conn.execute("SELECT id, name, source, vector FROM embeddings ORDER BY name, id").fetchall()
        width = 4 * self.dim
        bad = [row_id for row_id, _, _, blob in rows if not isinstance(blob, bytes) or len(blob) != width]
        if bad:
            raise GalleryError(
                f"{self.path}: embedding rows {bad[:5]} are not {self.dim} float32 values; the file is damaged — "
                "remove those people and enroll them again"
            )
        n = len(rows)
        # a writable native-order copy (faiss will not take the read-only view frombuffer gives)
        matrix = np.frombuffer(b"".join(r[3] for r in rows), dtype="<f4").reshape(n, self.dim).astype(np.float32)
        names = [r[1] for r in rows]
        starts = np.array([i for i in range(n) if i == 0 or names[i] != names[i - 1]], dtype=np.int64)
        ends = np.append(starts[1:], n).astype(np.int64)
        self._index = Index(
            key=key,
            matrix=matrix,
            sources=[r[2] for r in rows],
            names=[names[i] for i in starts],
            starts=starts,
            ends=ends,
            person_of_row=np.repeat(np.arange(len(starts)), ends - starts),
        )
        return self._index

"""Faces in a video: frames decoded as a stream, every N-th frame analysed, faces linked into tracks.

Frames come from OpenCV's VideoCapture one at a time (the video is never held in memory) and are analysed a
few at a time. Each face joins the live track whose last face it matches best, where a match needs the
embedding cosine to reach the model's verification threshold (the same person) and the score adds the box
IoU (the same place) to the cosine; each frame's assignment is optimal (Hungarian, scipy). A track ends when
it has gone unmatched for more than ``max_gap`` analysed frames, so a person who comes back after a longer
absence starts a new track.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from .cluster import same_person_threshold
from .errors import ImageDecodeError, InvalidInputError
from .io import VIDEO_SUFFIXES
from .evaluate.detection import box_iou
from .outputs import OutputDir
from .types import Face, box_area

__all__ = ["VIDEO_OUTPUTS", "VIDEO_SUFFIXES", "FaceTracker", "Track", "VideoFrame", "VideoResult", "VideoStream",
           "analyze_video"]

VIDEO_OUTPUTS = ["faces.json", "tracks.json"]
_UNLINKABLE = 1e6
"""Assignment cost of a track-face pair that may not be linked (above any real cost, which is in [-2, 1])."""


@dataclass
class Track:
    """One person's run of faces across analysed frames."""

    id: int
    first_frame: int
    first_time: float | None
    last_frame: int
    last_time: float | None
    last_box: np.ndarray
    last_embedding: np.ndarray
    embedding_sum: np.ndarray
    best: dict[str, Any]
    """The face with the highest detector score x box area: its frame, time, box and that value."""
    faces: int = 1
    misses: int = 0

    @classmethod
    def start(cls, track_id: int, frame: int, time: float | None, face: Face) -> "Track":
        """A new track holding this one face."""
        return cls(track_id, frame, time, frame, time, face.box, face.embedding, face.embedding.astype(np.float64),
                   _best(frame, time, face))

    def add(self, frame: int, time: float | None, face: Face) -> None:
        """Extend the track by this frame's face."""
        self.last_frame, self.last_time, self.last_box, self.last_embedding = frame, time, face.box, face.embedding
        self.embedding_sum += face.embedding
        self.faces += 1
        self.misses = 0
        candidate = _best(frame, time, face)
        if candidate["quality"] > self.best["quality"]:
            self.best = candidate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as written to tracks.json (the mean embedding L2-normalised)."""
        mean = self.embedding_sum / max(float(np.linalg.norm(self.embedding_sum)), 1e-12)
        return {"id": self.id, "first_frame": self.first_frame, "first_time": self.first_time,
                "last_frame": self.last_frame, "last_time": self.last_time, "faces": self.faces,
                "best": self.best, "embedding": [round(float(v), 6) for v in mean]}


def _best(frame: int, time: float | None, face: Face) -> dict[str, Any]:
    """A face as a candidate for its track's best: where it is, and its detector score x box area."""
    return {"frame": frame, "time": time, "box": [round(float(v), 2) for v in face.box],
            "quality": round(face.score * box_area(face.box), 2)}


class FaceTracker:
    """Links each analysed frame's faces to live tracks (see the module's docstring for the rule)."""

    def __init__(self, threshold: float, max_gap: int = 3) -> None:
        if isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)) or max_gap < 0:
            raise InvalidInputError(f"max_gap must be a whole number >= 0, got {max_gap!r}")
        self.threshold = float(threshold)
        self.max_gap = int(max_gap)
        self.live: list[Track] = []
        self.ended: list[Track] = []

    def update(self, frame: int, time: float | None, faces: list[Face]) -> list[int]:
        """Track id of each face of this frame; tracks unmatched for more than ``max_gap`` frames end."""
        if any(f.embedding is None for f in faces):
            raise InvalidInputError("the model has no embedding head: faces cannot be tracked")
        rows, cols = self._match(faces)
        ids = [-1] * len(faces)
        for r, c in zip(rows.tolist(), cols.tolist()):
            self.live[r].add(frame, time, faces[c])
            ids[c] = self.live[r].id
        matched = set(rows.tolist())
        for r, track in enumerate(self.live):
            track.misses += r not in matched
        self.ended += [t for t in self.live if t.misses > self.max_gap]
        self.live = [t for t in self.live if t.misses <= self.max_gap]
        for c in (c for c in range(len(faces)) if ids[c] < 0):
            self.live.append(Track.start(len(self.live) + len(self.ended), frame, time, faces[c]))
            ids[c] = self.live[-1].id
        return ids

    def _match(self, faces: list[Face]) -> tuple[np.ndarray, np.ndarray]:
        """(track rows, face columns) of the best links: cosine >= threshold, most cosine + IoU in total."""
        if not self.live or not faces:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        cosine = np.stack([t.last_embedding for t in self.live]) @ np.stack([f.embedding for f in faces]).T
        iou = box_iou(np.stack([t.last_box for t in self.live]), np.stack([f.box for f in faces]))
        linkable = cosine >= self.threshold
        rows, cols = linear_sum_assignment(np.where(linkable, -(cosine + iou), _UNLINKABLE))
        keep = linkable[rows, cols]
        return rows[keep], cols[keep]

    def tracks(self) -> list[Track]:
        """Every track so far, ended or live, by id."""
        return sorted(self.ended + self.live, key=lambda t: t.id)


class VideoStream:
    """One video file opened with OpenCV (FFmpeg), read a frame at a time; ``error`` says why reading stopped
    before the frame count in the file's header (a truncated or corrupt file), None when it did not."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.source = os.fspath(path)
        if not Path(self.source).is_file():
            raise ImageDecodeError(self.source, "no such file" if not Path(self.source).exists() else "not a file")
        self.capture = cv2.VideoCapture(self.source, cv2.CAP_FFMPEG)
        if not self.capture.isOpened():
            raise ImageDecodeError(self.source, "cannot be opened as a video (not a video, or a damaged one)")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if math.isfinite(fps) and fps > 0 else None
        self.frame_count = max(int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        self.decoded = 0
        self.error: str | None = None

    def time(self, frame: int) -> float | None:
        """Seconds from the start of the video to this frame (None when the file states no frame rate)."""
        return None if self.fps is None else round(frame / self.fps, 4)

    def frames(self, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """(index, RGB uint8 frame) of every ``every``-th frame, from frame 0; the others are skipped undecoded."""
        try:
            while True:
                wanted = self.decoded % every == 0
                ok, frame = self.capture.read() if wanted else (self.capture.grab(), None)
                if not ok:
                    break
                if wanted:
                    yield self.decoded, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                self.decoded += 1
        except cv2.error as exc:
            self.error = f"decoding failed at frame {self.decoded}: {exc}"
        if self.error is None and self.decoded < self.frame_count:
            self.error = (f"decoding stopped at frame {self.decoded} of {self.frame_count} "
                          "(truncated or corrupt file)")

    def close(self) -> None:
        self.capture.release()


@dataclass
class VideoFrame:
    """The faces of one analysed frame and the track each belongs to (crops dropped to keep memory small)."""

    index: int
    time: float | None
    faces: list[Face]
    tracks: list[int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as written to faces.json."""
        return {"frame": self.index, "time": self.time,
                "faces": [{**f.to_dict(), "track": t} for f, t in zip(self.faces, self.tracks)]}


@dataclass
class VideoResult:
    """Every analysed frame with its faces, the tracks, and why decoding stopped early (None if it did not)."""

    source: str
    fps: float | None
    decoded: int
    frames: list[VideoFrame] = field(default_factory=list)
    tracks: list[Track] = field(default_factory=list)
    error: str | None = None


def analyze_video(analyzer: Any, path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                  every: int = 1, threshold: float | None = None, max_gap: int = 3, batch_size: int = 8,
                  force: bool = False) -> VideoResult:
    """Faces and face tracks of a video with ``analyzer`` (a FaceAnalyzer), analysing every ``every``-th frame,
    ``batch_size`` frames per call. ``threshold`` (default: the model's calibrated one) is the cosine needed
    to link a face to a track. With ``out_dir``, writes faces.json and tracks.json there (an existing one only
    with ``force``), also when the video stops decoding midway: ``error`` then says why.

    Raises ImageDecodeError when the file cannot be opened as a video."""
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise InvalidInputError(f"every must be a whole number >= 1, got {every!r}")
    out = None if out_dir is None else OutputDir(out_dir, force=force)
    if out is not None:
        out.check_free(VIDEO_OUTPUTS)
    tracker = FaceTracker(same_person_threshold(analyzer, threshold), max_gap)
    stream = VideoStream(path)
    frames: list[VideoFrame] = []
    try:
        with tqdm(total=stream.frame_count or None, desc="video", unit="frame", dynamic_ncols=True) as bar:
            for batch in _batches(stream.frames(every), batch_size):
                for (index, _), faces in zip(batch, analyzer.analyze([image for _, image in batch])):
                    time = stream.time(index)
                    for face in faces:
                        face.crop = None
                    frames.append(VideoFrame(index, time, faces, tracker.update(index, time, faces)))
                bar.update(stream.decoded - bar.n)
    finally:
        stream.close()
    result = VideoResult(stream.source, stream.fps, stream.decoded, frames, tracker.tracks(), stream.error)
    if out is not None:
        out.write_json("faces.json", [f.to_dict() for f in result.frames])
        out.write_json("tracks.json", [t.to_dict() for t in result.tracks])
    return result


def _batches(frames: Iterator[tuple[int, np.ndarray]], size: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Consecutive groups of ``size`` frames (the last one shorter)."""
    batch: list[tuple[int, np.ndarray]] = []
    for item in frames:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

"""Faces in videos: streamed decoding, face tracks across a cut, truncated and non-video files.

The clip is made here from two real celeba_wild test photos of different people: person A for 10 frames,
a cut to person B for 10 frames, then A again, each shot panning a pixel per frame, 120x160 at 10 fps,
Motion-JPEG in AVI (a truncated AVI still opens and decodes up to the cut, unlike an MP4 whose index sits at
its end).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from facemtl.analyzer import FaceAnalyzer
from facemtl.cli import main
from facemtl.errors import ImageDecodeError, InvalidInputError, OutputExistsError
from facemtl.types import Face
from facemtl.video import FaceTracker, analyze_video

PERSON_A, PERSON_B = "7213/183714.jpg", "7220/185169.jpg"  # cosine of their faces with the shipped model: -0.46
SHOT, SIZE, FPS = 10, (120, 160), 10.0


def _shot(photo: Path) -> list[np.ndarray]:
    """SHOT frames (BGR) of a photo, the view moving a pixel right and down per frame."""
    big = cv2.resize(cv2.imread(str(photo)), (SIZE[0] + SHOT, SIZE[1] + SHOT), interpolation=cv2.INTER_AREA)
    return [big[t:t + SIZE[1], t:t + SIZE[0]] for t in range(SHOT)]


@pytest.fixture(scope="module")
def clip(celeba_wild_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A, then B, then A again: 3 shots of SHOT frames."""
    path = tmp_path_factory.mktemp("video") / "cut.avi"
    a, b = (_shot(celeba_wild_dir / "test" / name) for name in (PERSON_A, PERSON_B))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    assert writer.isOpened(), "OpenCV cannot write Motion-JPEG AVI here"
    for frame in a + b + a:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer(device="cpu", refine=0)  # tracks need boxes and embeddings only


@pytest.mark.parametrize("every", [1, 2])
def test_one_track_per_person_per_shot(clip: Path, analyzer: FaceAnalyzer, tmp_path: Path, every: int) -> None:
    result = analyze_video(analyzer, clip, tmp_path, every=every)
    assert result.error is None and result.decoded == 3 * SHOT
    assert [f.index for f in result.frames] == list(range(0, 3 * SHOT, every))
    assert all(len(f.faces) == 1 for f in result.frames)
    shot_of_track: dict[int, set[int]] = {}
    for frame in result.frames:
        shot_of_track.setdefault(frame.tracks[0], set()).add(frame.index // SHOT)
    assert sorted(map(sorted, shot_of_track.values())) == [[0], [1], [2]]  # a new track per shot, no switch

    faces = json.loads((tmp_path / "faces.json").read_text())
    assert [r["frame"] for r in faces] == [f.index for f in result.frames]
    assert [r["time"] for r in faces] == pytest.approx([f.index / FPS for f in result.frames])
    assert {"box", "score", "landmarks", "attributes", "track"} <= set(faces[0]["faces"][0])
    tracks = json.loads((tmp_path / "tracks.json").read_text())
    assert [t["id"] for t in tracks] == [0, 1, 2]
    for k, track in enumerate(tracks):
        shown = [i for i in range(k * SHOT, (k + 1) * SHOT) if i % every == 0]
        assert (track["first_frame"], track["last_frame"], track["faces"]) == (shown[0], shown[-1], len(shown))
        assert track["last_time"] == pytest.approx(shown[-1] / FPS)
        assert track["best"]["frame"] in shown and len(track["best"]["box"]) == 4
        assert np.linalg.norm(track["embedding"]) == pytest.approx(1.0, abs=1e-4)
    same = np.dot(tracks[0]["embedding"], tracks[2]["embedding"])
    other = np.dot(tracks[0]["embedding"], tracks[1]["embedding"])
    assert same > analyzer.threshold > other


def test_truncated_video_keeps_analysed_frames_and_exits_1(clip: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut.avi"
    data = clip.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    assert main(["analyze", str(cut), "--out", str(tmp_path / "out"), "--device", "cpu", "--refine", "0"]) == 1
    err = capsys.readouterr().err
    assert "error" in err and "truncated" in err and str(cut) in err
    faces = json.loads((tmp_path / "out" / "faces.json").read_text())
    assert 0 < len(faces) < 3 * SHOT
    assert [r["frame"] for r in faces] == list(range(len(faces)))
    assert all(len(r["faces"]) == 1 for r in faces)
    assert json.loads((tmp_path / "out" / "tracks.json").read_text())[0]["first_frame"] == 0


def test_files_that_are_no_video_raise_a_typed_error(analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(ImageDecodeError, match="cannot be opened as a video"):
        analyze_video(analyzer, text)
    with pytest.raises(ImageDecodeError, match="no such file"):
        analyze_video(analyzer, tmp_path / "missing.mp4")
    with pytest.raises(InvalidInputError, match="every"):
        analyze_video(analyzer, text, every=0)


def test_existing_outputs_are_refused_before_decoding(clip: Path, analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    (tmp_path / "tracks.json").write_text("mine\n")
    with pytest.raises(OutputExistsError, match="--force"):
        analyze_video(analyzer, clip, tmp_path)
    assert (tmp_path / "tracks.json").read_text() == "mine\n" and not (tmp_path / "faces.json").exists()


def _face(x: float, direction: int) -> Face:
    """A 20 px face at (x, 0) whose embedding is the unit vector ``direction`` of 4."""
    return Face(box=np.array([x, 0, x + 20, 20]), score=1.0, landmarks5=np.zeros((5, 2)),
                embedding=np.eye(4, dtype=np.float32)[direction])


def test_tracker_links_by_identity_and_ends_tracks_after_the_gap() -> None:
    tracker = FaceTracker(threshold=0.5, max_gap=1)
    assert tracker.update(0, 0.0, [_face(0, 0), _face(100, 1)]) == [0, 1]
    assert tracker.update(1, 0.1, [_face(100, 0), _face(0, 1)]) == [0, 1]  # they swap places: identity wins
    assert tracker.update(2, 0.2, [_face(100, 2)]) == [2]  # same place as track 0, another person
    assert tracker.update(3, 0.3, [_face(0, 1)]) == [1]  # track 1 was missed once: max_gap 1 bridges it
    assert tracker.update(4, 0.4, [_face(100, 0)]) == [3]  # track 0 missed twice: it has ended
    assert [(t.id, t.first_frame, t.last_frame, t.faces) for t in tracker.tracks()] == [
        (0, 0, 1, 2), (1, 0, 3, 3), (2, 2, 2, 1), (3, 4, 4, 1)]

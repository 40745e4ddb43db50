"""The standard evaluation of a multi-task model on the real data, end to end (detect -> align -> CNN).

- CelebA test (unseen identities): verification, 10-fold, on all same-identity pairs plus as many
  different-identity pairs (seed 1), TAR at FAR 1e-2 / 1e-3, and mean accuracy over the 40 attributes;
- celeba_wild test: the same verification protocol on whole photos; a photo where no face is found makes
  every pair it is in a wrong answer;
- MTFL test (2,995 AFLW faces): landmark error normalised by the inter-ocular distance, failure rate
  (> 10%), CED, and gender / smile / glasses accuracy;
- UTKFace test (2,371 faces of its committed split, where the set is staged): age MAE and gender accuracy,
  overall and per age band, gender and race group (race measures only; it is never predicted).

Faces are found by the detector (cached per dataset, since the detector does not change between models);
each photo's annotated face is the largest one (for MTFL: the detection holding the annotated face). Where
the detector finds nothing in a CelebA or MTFL photo, the face is taken where the detector puts it on
average in that set (mean relative landmarks; no label is used), and counted in ``detector_misses``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from ..align import align, to_photo
from ..analyzer import CropOutputs, FaceAnalyzer
from ..data.celeba import read_celeba
from ..data.folders import read_person_folders
from ..data.landmark_cache import CachedFace, cached_detections, default_cache_dir
from ..data.mtfl import MTFL_ATTRIBUTES, read_mtfl
from ..data.utkface import UTKFACE_RACES, read_utkface
from ..errors import DatasetError
from ..io import load_image
from ..types import POSE_NAMES, largest
from . import plots
from .attributes import attribute_accuracy
from .gallery import evaluate_gallery
from .groups import error_by_age, group_table
from .landmarks import landmark_errors, landmark_metrics, landmark_point_errors
from .verification import (cosine_scores, make_identity_pairs, roc, verification_accuracy,
                           verification_accuracy_with_failures)

PARTS = ("celeba", "wild", "mtfl", "utkface")
"""The protocols a plain ``facemtl evaluate`` runs (the model card's figures); ``gallery`` (enroll / identify
unseen CelebA people, :mod:`.gallery`) runs only when named."""
MTFL_LABELS = {"gender": "male", "smile": "smiling", "glasses": "eyeglasses"}
"""MTFL's attributes by name: the reader's field (1 = male / smiling / glasses); ``MTFL_ATTRIBUTES`` names the
CelebA attribute that predicts each."""
ERROR_THUMBNAILS = 48


_CROP_MEMO: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
CROP_MEMO_SIZE = 4
"""Aligned evaluation sets kept in memory: evaluating several models in one process (an ablation) then
costs only the networks, not decoding and warping thousands of photos again."""


def _aligned_crops(paths: Sequence[Path], chosen: Sequence[CachedFace | None], fallback_rel: np.ndarray | None,
                   size: int, memo: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops (N,S,S,3), photo->crop matrices and the no-face mask of one evaluation set (memoised unless
    ``memo`` is off: crops aligned on one model's predictions are of no use to the next model)."""
    digest = hashlib.sha256(f"{size}|{fallback_rel!r}".encode())
    for path, face in zip(paths, chosen):
        digest.update(str(path).encode())
        digest.update(b"-" if face is None else np.ascontiguousarray(face.landmarks, np.float32).tobytes())
    key = digest.hexdigest()
    if key in _CROP_MEMO:
        return _CROP_MEMO[key]
    crops, matrices, missing = [], [], []
    for path, face in zip(paths, chosen):
        image = load_image(path)
        if face is None and fallback_rel is None:
            crops.append(np.zeros((size, size, 3), np.uint8))
            matrices.append(np.eye(3)[:2])
            missing.append(True)
            continue
        lm = face.landmarks if face is not None else fallback_rel * np.array(image.shape[1::-1], np.float32)
        aligned = align(image, lm, size=size)
        crops.append(aligned.crops[0])
        matrices.append(aligned.matrices[0])
        missing.append(face is None)
    result = (np.stack(crops), np.stack(matrices), np.array(missing))
    if not memo:
        return result
    while len(_CROP_MEMO) >= CROP_MEMO_SIZE:
        _CROP_MEMO.pop(next(iter(_CROP_MEMO)))
    _CROP_MEMO[key] = result
    return result


def _faces_to_crops(analyzer: FaceAnalyzer, paths: Sequence[Path], chosen: Sequence[CachedFace | None],
                    fallback_rel: np.ndarray | None, refine: bool = True) -> tuple[CropOutputs, np.ndarray, np.ndarray]:
    """Align each photo's chosen face (or the fallback), run the network on all crops at once and, with
    ``refine``, re-align on its landmarks ``analyzer.refine`` times, as ``FaceAnalyzer.analyze`` does.

    Returns the outputs, the photo->crop matrices and a mask of photos that had no usable face.
    """
    crops, matrices, missing = _aligned_crops(paths, chosen, fallback_rel, analyzer.input_size)

    def realign(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        moved = [None if miss and fallback_rel is None else CachedFace(np.zeros(4), 0.0, pts)
                 for pts, miss in zip(points.astype(np.float32), missing)]
        return _aligned_crops(paths, moved, fallback_rel, analyzer.input_size, memo=False)[:2]

    out, matrices = analyzer.refined(realign, analyzer.run_crops(crops), matrices, analyzer.refine if refine else 0)
    return out, matrices, missing


def _mean_relative(paths: Sequence[Path], chosen: Sequence[CachedFace | None]) -> np.ndarray:
    """Mean landmarks relative to the image size over the photos where a face was found."""
    rel = []
    for p, f in zip(paths, chosen):
        if f is not None:
            with Image.open(p) as im:
                rel.append(f.landmarks / np.array(im.size, np.float32))
    return np.mean(rel, axis=0)


def _pick_annotated(faces: list[CachedFace] | None, gt: np.ndarray) -> CachedFace | None:
    """The detection holding the annotated face: its box contains the annotated points' centre; closest."""
    if not faces:
        return None
    centre = gt.mean(axis=0)
    inside = [f for f in faces if f.box[0] <= centre[0] <= f.box[2] and f.box[1] <= centre[1] <= f.box[3]]
    if not inside:
        return None
    return min(inside, key=lambda f: float(np.linalg.norm(f.landmarks.mean(axis=0) - centre)))


def evaluate_celeba(analyzer: FaceAnalyzer, root: Path, cache: Path, limit: int | None = None,
                    split: str = "test") -> dict[str, Any]:
    """Verification on all same/different pairs of one split's identities, and the 40 attributes."""
    faces = read_celeba(root / "celeba", split)[:limit]
    paths = [f.path for f in faces]
    found = cached_detections(paths, cache / f"eval-celeba-{split}.json", analyzer.detector)
    chosen = [None if found[p] is None else largest(found[p]) for p in paths]
    out, _, missing = _faces_to_crops(analyzer, paths, chosen, _mean_relative(paths, chosen))
    ids = np.array([f.identity for f in faces])
    result: dict[str, Any] = {"images": len(paths), "identities": int(len(np.unique(ids))),
                              "detector_misses": int(missing.sum())}
    if out.embedding is not None:
        a, b, same, fold = make_identity_pairs(ids, seed=1)
        scores = cosine_scores(out.embedding[a], out.embedding[b])
        result["verification"] = verification_accuracy(scores, same, fold).to_dict()
        result["_roc"] = roc(scores, same)[:2]
    if out.attributes is not None:
        names = list(analyzer.model.config.attribute_names)
        attrs = attribute_accuracy(out.attributes, np.stack([f.attributes for f in faces]), names)
        result["attributes"] = attrs.to_dict()
        result["_attr_acc"] = np.asarray(attrs.accuracy)
    return result


def _largest_face_embeddings(analyzer: FaceAnalyzer, paths: Sequence[Path], cache_file: Path
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Whole photos end to end: the embedding of each photo's largest face (detections cached in
    ``cache_file``) and the mask of photos without one (their rows are meaningless)."""
    found = cached_detections(paths, cache_file, analyzer.detector)
    chosen = [None if found[p] is None else largest(found[p]) for p in paths]
    out, _, missing = _faces_to_crops(analyzer, paths, chosen, None, refine=False)
    return out.embedding, missing


def evaluate_wild(analyzer: FaceAnalyzer, root: Path, cache: Path, limit: int | None = None) -> dict[str, Any]:
    photos = read_person_folders(root / "celeba_wild" / "test")[:limit]
    paths = [p.path for p in photos]
    if "verification" not in analyzer.model.config.tasks:
        return {"photos": len(paths)}
    embedding, missing = _largest_face_embeddings(analyzer, paths, cache / "eval-wild-test.json")
    people = np.array([p.person for p in photos])
    a, b, same, fold = make_identity_pairs(people, seed=1)
    scores = cosine_scores(embedding[a], embedding[b])
    scores[missing[a] | missing[b]] = np.nan
    scored, accuracy, unscored = verification_accuracy_with_failures(scores, same, fold)
    far, tar, _ = roc(scores[np.isfinite(scores)], same[np.isfinite(scores)])
    return {"photos": len(paths), "identities": int(len(np.unique(people))),
            "photos_without_face": int(missing.sum()), "pairs_without_face": unscored,
            "verification_accuracy": accuracy, "verification_scored_pairs": scored.to_dict(),
            "_roc": (far, tar)}


def evaluate_mtfl(analyzer: FaceAnalyzer, root: Path, cache: Path, limit: int | None = None) -> dict[str, Any]:
    faces = read_mtfl(root / "MTFL", "testing")[:limit]
    paths = [f.path for f in faces]
    found = cached_detections(paths, cache / "eval-mtfl-test.json", analyzer.detector)
    chosen = [_pick_annotated(found[f.path], f.landmarks) for f in faces]
    out, matrices, missing = _faces_to_crops(analyzer, paths, chosen, _mean_relative(paths, chosen))
    gt = np.stack([f.landmarks for f in faces])
    result: dict[str, Any] = {"faces": len(faces), "detector_misses": int(missing.sum())}
    if out.landmarks is not None:
        pred = to_photo(matrices, out.landmarks)
        errors = landmark_errors(pred, gt)
        lm = landmark_metrics(landmark_point_errors(pred, gt))
        result["landmarks"] = lm.to_dict()
        result["landmarks"]["mean_nme_percent"] = 100.0 * float(errors.mean())
        result["landmarks"]["mean_offset_px"] = [float(v) for v in (pred - gt).mean(axis=(0, 1))]
        result["_ced"] = (lm.ced_x, lm.ced_y)
        result["landmarks_annotated_alignment"] = _annotated_alignment(analyzer, faces, gt)
    names = list(analyzer.model.config.attribute_names)
    if out.attributes is not None:
        probs = out.attributes[:, [names.index(MTFL_ATTRIBUTES[field]) for field in MTFL_LABELS.values()]]
        truth = np.array([[getattr(f, field) for field in MTFL_LABELS.values()] for f in faces])
        scored = attribute_accuracy(probs, truth, tuple(MTFL_LABELS))
        result.update({f"{label}_accuracy": float(scored.accuracy[k]) for k, label in enumerate(MTFL_LABELS)})
        result["attributes"] = scored.to_dict()
        result["attribute_accuracy_by_pose"] = _accuracy_by_pose(probs, truth, np.array([f.pose for f in faces]))
        result["_errors"] = {label: _error_thumbnails(paths, matrices, probs[:, k], truth[:, k], analyzer.input_size)
                             for k, label in enumerate(MTFL_LABELS)}
    detector_only = np.stack([c.landmarks if c is not None else np.full((5, 2), np.nan) for c in chosen])
    ok = ~missing
    if ok.any():
        result["detector_landmarks_nme_percent"] = 100.0 * float(landmark_errors(detector_only[ok], gt[ok]).mean())
    return result


def evaluate_utkface(analyzer: FaceAnalyzer, root: Path, cache: Path, limit: int | None = None) -> dict[str, Any]:
    """Age and gender on UTKFace's test split, overall and per group; skipped (and said so) where the set is
    not staged under the data root."""
    folder = root / "UTKFace"
    if not folder.is_dir():
        return {"skipped": f"UTKFace not staged at {folder}"}
    faces = read_utkface(folder, "test").faces[:limit]
    paths = [f.path for f in faces]
    found = cached_detections(paths, cache / "eval-utkface-test.json", analyzer.detector)
    chosen = [None if found[p] is None else largest(found[p]) for p in paths]
    out, _, missing = _faces_to_crops(analyzer, paths, chosen, _mean_relative(paths, chosen))
    names = list(analyzer.model.config.attribute_names)
    male = None if out.attributes is None else out.attributes[:, names.index("Male")]
    ages = np.array([f.age for f in faces])
    result: dict[str, Any] = {"faces": len(faces), "detector_misses": int(missing.sum()),
                              "groups": group_table(ages, np.array([f.male for f in faces]),
                                                    np.array([f.race for f in faces]), UTKFACE_RACES, out.age, male)}
    if out.age is not None:
        result["_age_curve"] = error_by_age(ages, out.age)[:2]
    return result


def _accuracy_by_pose(probs: np.ndarray, truth: np.ndarray, pose: np.ndarray) -> dict[str, dict[str, float]]:
    """Accuracy of each MTFL attribute within each head-pose class (the annotated pose), with the face count."""
    by_pose = {}
    for k, name in enumerate(POSE_NAMES):
        here = pose == k
        if here.any():
            acc = attribute_accuracy(probs[here], truth[here], tuple(MTFL_LABELS)).accuracy
            by_pose[name] = {"faces": int(here.sum()), **{label: float(a) for label, a in zip(MTFL_LABELS, acc)}}
    return by_pose


def _error_thumbnails(paths: Sequence[Path], matrices: np.ndarray, prob: np.ndarray, truth: np.ndarray,
                      size: int, count: int = ERROR_THUMBNAILS, scale: int = 2) -> list[tuple[np.ndarray, str]]:
    """The ``count`` most confident wrong answers as (crop the network saw, drawn ``scale`` times larger;
    caption) for a picture of where an attribute fails."""
    wrong_by = np.where(truth == 1, 1.0 - prob, prob)
    worst = [i for i in np.argsort(-wrong_by, kind="stable")[:count] if wrong_by[i] > 0.5]
    return [(cv2.warpAffine(load_image(paths[i]), matrices[i] * scale, (size * scale, size * scale),
                            flags=cv2.INTER_AREA), f"label {int(truth[i])}, p={prob[i]:.2f}") for i in worst]


def annotated_predictions(analyzer: FaceAnalyzer, faces: Sequence[Any]) -> np.ndarray:
    """The landmark head's (N,5,2) photo points on crops aligned on each face's annotated ``landmarks``."""
    chosen = [CachedFace(np.zeros(4), 0.0, f.landmarks.astype(np.float32)) for f in faces]
    crops, matrices, _ = _aligned_crops([f.path for f in faces], chosen, None, analyzer.input_size, memo=False)
    return to_photo(matrices, analyzer.run_crops(crops).landmarks)


def _annotated_alignment(analyzer: FaceAnalyzer, faces: Sequence[Any], gt: np.ndarray) -> dict[str, float]:
    """Diagnostic: the landmark head on crops aligned on the annotated points (no user has those), i.e. what
    a perfect alignment would give; the gap to the real figure is the alignment's share of the error."""
    pred = annotated_predictions(analyzer, faces)
    return {"mean_nme_percent": 100.0 * float(landmark_errors(pred, gt).mean()),
            "failure_rate_percent": 100.0 * landmark_metrics(landmark_point_errors(pred, gt)).failure_rate}


def evaluate_model(analyzer: FaceAnalyzer, root: Path, cache_dir: Path | None = None,
                   parts: Sequence[str] = PARTS, out_dir: Path | None = None,
                   limit: int | None = None) -> dict[str, Any]:
    """Run the chosen parts; write ``evaluation.json`` and the plots to ``out_dir`` when given.

    ``limit`` keeps only the first N photos of each set (quick checks; the protocols want all of them).
    """
    cache = default_cache_dir(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    runners = {"celeba": evaluate_celeba, "wild": evaluate_wild, "mtfl": evaluate_mtfl, "utkface": evaluate_utkface,
               "gallery": lambda analyzer, root, _cache, limit: evaluate_gallery(analyzer, root, limit=limit)}
    results: dict[str, Any] = {"model": analyzer.model_id, "flip_averaging": analyzer.flip,
                               "refine_passes": analyzer.refine}
    for part in parts:
        results[part] = runners[part](analyzer, Path(root), cache, limit)
    if out_dir is not None:
        _write(results, Path(out_dir), list(analyzer.model.config.attribute_names))
    return _public(results)


def calibrate_threshold(analyzer: FaceAnalyzer, root: Path, cache_dir: Path | None = None,
                        limit: int | None = None) -> dict[str, Any]:
    """The cosine threshold with the best accuracy on CelebA *val* pairs (never the test identities)."""
    cache = default_cache_dir(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    found = evaluate_celeba(analyzer, Path(root), cache, limit, split="val")["verification"]
    return {"threshold": float(found["threshold"]), "val_accuracy": float(found["accuracy"])}


def calibrate_on_folders(analyzer: FaceAnalyzer, folder: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """The cosine threshold with the best accuracy on all pairs of a folder of people never trained on (one
    sub-folder of whole photos each, the largest face of each): calibration for a model of one's own data.
    Photos without a face are left out and counted."""
    photos = read_person_folders(folder)
    paths = [p.path for p in photos]
    cache = default_cache_dir(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    embedding, missing = _largest_face_embeddings(analyzer, paths, cache / "calibrate-folders.json")
    people = np.array([p.person for p in photos])[~missing]
    if len(np.unique(people)) < 2 or len(people) == len(np.unique(people)):
        raise DatasetError(f"{folder}: calibration needs at least two people and one of them with two photos "
                           f"in which a face is found ({int((~missing).sum())} of {len(paths)} photos have one)")
    a, b, same, fold = make_identity_pairs(people, seed=1)
    embedding = embedding[~missing]
    result = verification_accuracy(cosine_scores(embedding[a], embedding[b]), same, fold)
    return {"threshold": float(result.threshold), "val_accuracy": float(result.accuracy),
            "photos": len(paths), "photos_without_face": int(missing.sum())}


def _public(results: dict[str, Any]) -> dict[str, Any]:
    """Drop the arrays kept only for plotting."""
    if isinstance(results, dict):
        return {k: _public(v) for k, v in results.items() if not k.startswith("_")}
    return results


def _write(results: dict[str, Any], out: Path, names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(_public(results), indent=1))
    curves = {label: results[k]["_roc"] for k, label in (("celeba", "CelebA test"), ("wild", "celeba_wild test"))
              if k in results and "_roc" in results[k]}
    if curves:
        plots.plot_roc(curves, out / "roc.png", title="Verification ROC (unseen identities)")
    if "mtfl" in results and "_ced" in results["mtfl"]:
        plots.plot_ced({"facemtl": results["mtfl"]["_ced"]}, out / "ced.png",
                       title="MTFL test (AFLW): cumulative error distribution")
    for label, thumbs in results.get("mtfl", {}).get("_errors", {}).items():
        if thumbs:
            plots.plot_image_grid([t for t, _ in thumbs], [c for _, c in thumbs], out / f"mtfl_{label}_errors.png",
                                  title=f"MTFL test: the most confident wrong {label} answers (label 1 = "
                                        f"{MTFL_LABELS[label]})")
    utk = results.get("utkface", {})
    if "_age_curve" in utk or "gender_accuracy" in utk.get("groups", {}).get("all", {}):
        bands = utk["groups"]["age_band"]
        accuracy = [bands[b].get("gender_accuracy", float("nan")) for b in bands]
        plots.plot_age_groups(*(utk["_age_curve"] if "_age_curve" in utk else ([], [])), list(bands), accuracy,
                              out / "utkface_groups.png", title="UTKFace test: age error by true age (left), gender accuracy by age band (right)")
    if "celeba" in results and "_attr_acc" in results["celeba"]:
        plots.plot_attribute_bars(names, {"facemtl": results["celeba"]["_attr_acc"]}, out / "attributes.png",
                                  title="CelebA test: accuracy per attribute")


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The figures the issues name, flat, in percent."""
    h: dict[str, float] = {}
    if "mtfl" in results:
        m = results["mtfl"]
        if "landmarks" in m:
            h["mtfl_nme_%"] = m["landmarks"]["mean_nme_percent"]
            h["mtfl_failure_%"] = m["landmarks"]["failure_rate_percent"]
        for k in ("gender", "smile", "glasses"):
            if f"{k}_accuracy" in m:
                h[f"mtfl_{k}_%"] = 100.0 * m[f"{k}_accuracy"]
    c = results.get("celeba", {})
    if "attributes" in c:
        h["celeba_attr_mean_%"] = 100.0 * c["attributes"]["mean_accuracy"]
    if "verification" in c:
        h["celeba_verif_%"] = 100.0 * c["verification"]["accuracy"]
        h["celeba_tar@far1e-2_%"] = 100.0 * c["verification"]["tar_at_far_1e-2"]
    utk = results.get("utkface", {}).get("groups", {}).get("all", {})
    if "age_mae" in utk:
        h["utkface_age_mae_years"] = utk["age_mae"]
    if "gender_accuracy" in utk:
        h["utkface_gender_%"] = 100.0 * utk["gender_accuracy"]
    if "gallery" in results:
        h["gallery_top1_%"] = 100.0 * results["gallery"]["top1_accuracy"]
        h["gallery_top5_%"] = 100.0 * results["gallery"]["top5_accuracy"]
    if "verification_accuracy" in results.get("wild", {}):
        h["wild_verif_%"] = 100.0 * results["wild"]["verification_accuracy"]
        h["wild_tar@far1e-2_%"] = 100.0 * results["wild"]["verification_scored_pairs"]["tar_at_far_1e-2"]
    return h

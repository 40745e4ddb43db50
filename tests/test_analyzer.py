"""FaceAnalyzer's refinement passes on the shipped sample photo with the shipped weights."""
from __future__ import annotations

import numpy as np
import pytest

from facemtl._resources import sample_photo
from facemtl.analyzer import FaceAnalyzer
from facemtl.errors import InvalidInputError


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer(device="cpu")


def test_refinement_moves_landmarks_but_keeps_the_embedding(analyzer: FaceAnalyzer) -> None:
    plain = analyzer.analyze(sample_photo(), refine=0)[0]
    refined = analyzer.analyze(sample_photo())[0]
    assert analyzer.refine == 1 and len(plain) == len(refined) == 1
    np.testing.assert_array_equal(plain[0].embedding, refined[0].embedding)
    np.testing.assert_array_equal(plain[0].crop, refined[0].crop)
    shift = np.abs(plain[0].landmarks - refined[0].landmarks).max()
    assert 0.01 < shift < 5.0          # a refinement, not a different face
    assert plain[0].attributes.keys() == refined[0].attributes.keys()
    np.testing.assert_array_equal(analyzer.embed(sample_photo())[0], plain[0].embedding)


def test_more_passes_stay_on_the_face(analyzer: FaceAnalyzer) -> None:
    once = analyzer.analyze(sample_photo(), refine=1)[0][0]
    thrice = analyzer.analyze(sample_photo(), refine=3)[0][0]
    assert np.abs(once.landmarks - thrice.landmarks).max() < 3.0
    box = once.box
    assert ((thrice.landmarks >= box[:2]) & (thrice.landmarks <= box[2:])).all()


@pytest.mark.parametrize("passes", [-1, 1.5, True, "2"])
def test_refine_must_be_a_whole_number(passes: object, analyzer: FaceAnalyzer) -> None:
    with pytest.raises(InvalidInputError, match="refine"):
        FaceAnalyzer(device="cpu", refine=passes)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="refine"):
        analyzer.analyze(sample_photo(), refine=passes)  # type: ignore[arg-type]


def test_a_face_whose_prediction_cannot_be_aligned_on_keeps_its_alignment(analyzer: FaceAnalyzer) -> None:
    """NaN or collapsed landmark predictions (a broken model, an odd crop) leave that face's alignment as it
    was instead of stopping the whole batch; the other faces are refined as usual."""
    from facemtl.analyzer import CropOutputs
    from facemtl.io import load_image
    image = load_image(sample_photo())
    faces = analyzer.analyze(image, refine=0)[0]
    base = np.stack([faces[0].landmarks5] * 3)
    crops, matrices = analyzer._align([image], [0, 0, 0], base)
    out = analyzer.run_crops(crops)
    broken = out.landmarks.copy()
    broken[1] = np.nan
    broken[2] = broken[2].mean(axis=0)
    seen = []

    def realign(points: np.ndarray):
        seen.append(points.copy())
        return analyzer._align([image], [0, 0, 0], points)

    analyzer.refined(realign, CropOutputs(landmarks=broken), matrices, passes=1)
    from facemtl.align import to_photo
    from facemtl.align import template
    kept = to_photo(matrices[1:], np.broadcast_to(template(analyzer.input_size), (2, 5, 2)))
    np.testing.assert_allclose(seen[0][1:], kept)
    np.testing.assert_allclose(seen[0][0], to_photo(matrices[:1], out.landmarks[:1])[0])
    again = analyzer._align([image], [0], seen[0][1:2])[1]
    np.testing.assert_allclose(again, matrices[1:2], atol=1e-4)    # the same alignment as before


@pytest.mark.data
def test_shipped_landmarks_sit_on_the_annotations_in_0_based_pixels(analyzer: FaceAnalyzer, mtfl_dir) -> None:
    """On MTFL training photos aligned on their own annotated points, the shipped head's landmarks sit on the
    annotations in x and not below them in y, where a coordinate-convention error puts them. The weights shipped
    before the MTFL reader moved to 0-based pixels sat +0.56 / +0.61 px off in y here (trained on 1-based labels;
    mirror augmentation had cancelled x). Measured (x, y) with the shipped model: lfw_5590 (-0.06, -0.18),
    net_7876 (-0.00, -0.62); with the jointly trained model before the teacher stage, net_7876's y was -0.41:
    net_7876's photos are read a little above their annotations by both, the opposite of that error."""
    from facemtl.data.mtfl import read_mtfl
    from facemtl.evaluate.suite import annotated_predictions
    faces = read_mtfl(mtfl_dir, "training")
    for source in ("lfw_5590", "net_7876"):
        chosen = [f for f in faces if f.path.parent.name == source][::40][:100]
        offset = (annotated_predictions(analyzer, chosen) - np.stack([f.landmarks for f in chosen])).mean(axis=(0, 1))
        assert abs(offset[0]) < 0.5 and -1.0 < offset[1] < 0.25, (source, offset)


def test_a_model_with_the_age_head_reports_an_age_per_face(tmp_path) -> None:
    import torch

    from facemtl.draw import face_labels
    from facemtl.model.multitask import ModelConfig, MultiTaskNet
    from facemtl.model.sharing import TASKS

    torch.manual_seed(0)
    model = MultiTaskNet(ModelConfig(num_identities=3, width=0.25, tasks=TASKS)).eval()
    with torch.no_grad():
        model.heads["age"].fc.bias.copy_(-0.5 * ((torch.arange(101.0) - 30) / 3) ** 2)   # a prior around 30
    faces = FaceAnalyzer(model=model, refine=0).analyze(sample_photo())[0]
    assert faces and all(25 < f.age < 35 for f in faces)
    record = faces[0].to_dict()
    assert record["age"] == round(faces[0].age, 1)
    assert face_labels(faces[0], top=2)[0] == f"age {faces[0].age:.0f}"
    faces[0].attributes = {"Attractive": 0.99, "Smiling": 0.7, "Male": 0.2}
    assert not any("attractive" in line for line in face_labels(faces[0], top=5))
    assert any("attractive" in line for line in face_labels(faces[0], top=5, judgements=True))


def test_the_shipped_model_reads_an_age_that_follows_celeba_young(analyzer: FaceAnalyzer, celeba_dir) -> None:
    """On CelebA test photos (never trained on) the faces its annotators did not call ``Young`` get older ages,
    every age is in 0..90 and few are a child's; faces.json and the annotated image's first line carry it."""
    from facemtl.data.celeba import CELEBA_ATTRIBUTES, read_celeba
    from facemtl.draw import face_labels

    young = CELEBA_ATTRIBUTES.index("Young")
    faces = read_celeba(celeba_dir, "test")[:160]
    found = analyzer.analyze([str(f.path) for f in faces])
    ages = np.array([max(fs, key=lambda x: x.score).age if fs else np.nan for fs in found], dtype=float)
    labels = np.array([f.attributes[young] for f in faces])
    ok = np.isfinite(ages)
    assert ok.sum() >= 150 and ((ages[ok] >= 0) & (ages[ok] < 90)).all()
    # some young adults read as children (the ages it learned are UTKFace's, 14% of them under 13): measured 6 of
    # these 160 under 13, the lowest 2.8 years for an adult; the model before 5 (lowest 5.2); over 400 photos 11 and 10
    assert (ages[ok] < 13).sum() <= 8, np.sort(ages[ok])[:10]
    older, younger = np.median(ages[ok & (labels == 0)]), np.median(ages[ok & (labels == 1)])
    assert older > younger + 12, (older, younger)       # measured: 48.5 against 29.3 years (160 faces found)
    face = found[0][0]
    assert face.to_dict()["age"] == round(face.age, 1) and face_labels(face, top=2)[0] == f"age {face.age:.0f}"

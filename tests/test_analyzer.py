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
def test_refine_must_be_a_whole_number(passes: object) -> None:
    with pytest.raises(InvalidInputError, match="refine"):
        FaceAnalyzer(device="cpu", refine=passes)  # type: ignore[arg-type]

"""The verification embedding's projection: the whitening fit, and how the network stores and applies it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facemtl.errors import InvalidInputError
from facemtl.model.multitask import ModelConfig, MultiTaskNet, load_model
from facemtl.train.projection import fit_within_whitening, set_projection, training_embeddings


def _clusters(rng: np.random.Generator, spread: np.ndarray, people: int = 30,
              faces: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Points around one centre per person, with a within-person ``spread`` (D,D) shared by everyone, as a
    pose or lighting change moves every face's embedding alike."""
    ids = np.repeat(np.arange(people), faces)
    centres = rng.normal(size=(people, len(spread)))
    return centres[ids] + rng.normal(size=(len(ids), len(spread))) @ spread, ids


def _spread(rng: np.random.Generator, dim: int = 8) -> np.ndarray:
    """A within-person spread that is large along a few directions and small along the others."""
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    return basis * np.array([2.0, 1.5] + [0.2] * (dim - 2))


def test_whitening_makes_the_within_identity_scatter_the_identity() -> None:
    rng = np.random.default_rng(0)
    x, ids = _clusters(rng, _spread(rng))
    centre, projection = fit_within_whitening(x, ids, shrinkage=0.0)
    y = (x - centre) @ projection
    means = np.stack([y[ids == i].mean(0) for i in np.unique(ids)])
    within = y - means[ids]
    np.testing.assert_allclose(within.T @ within / len(y), np.eye(x.shape[1]), atol=1e-9)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-9)


def test_whitening_separates_people_better_than_raw_cosine() -> None:
    """On people not fit on, same-person pairs stand further above different-person pairs after the projection."""
    rng = np.random.default_rng(1)
    spread = _spread(rng)
    x, ids = _clusters(rng, spread)
    test, test_ids = _clusters(rng, spread)
    centre, projection = fit_within_whitening(x, ids, shrinkage=0.1)

    def separation(e: np.ndarray) -> float:
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T
        same = test_ids[:, None] == test_ids[None]
        off = ~np.eye(len(e), dtype=bool)
        return float((sim[same & off].mean() - sim[~same].mean()) / sim[off].std())

    assert separation((test - centre) @ projection) > separation(test)


def test_shrinkage_keeps_rare_directions_finite() -> None:
    """A direction no person varies along (zero within scatter) cannot be whitened without shrinkage."""
    rng = np.random.default_rng(2)
    x, ids = _clusters(rng, _spread(rng))
    x[:, 0] = 0.0
    with pytest.raises(InvalidInputError, match="shrinkage > 0"):
        fit_within_whitening(x, ids, shrinkage=0.0)
    _, projection = fit_within_whitening(x, ids, shrinkage=0.1)
    assert np.isfinite(projection).all()


@pytest.mark.parametrize("ids, shrinkage, message", [
    (np.zeros(10), 0.1, "two identities"),
    (np.arange(10), 0.1, "two identities"),
    (np.repeat(np.arange(5), 2), -1.0, "shrinkage"),
])
def test_bad_fits_are_refused_clearly(ids: np.ndarray, shrinkage: float, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        fit_within_whitening(np.random.default_rng(0).normal(size=(10, 4)), ids, shrinkage)


def test_projection_is_applied_to_the_embedding_only_and_survives_a_model_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MultiTaskNet(ModelConfig(num_identities=5, width=0.25)).eval()
    crops = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        plain = model(x)
    raw = training_embeddings(model, crops, torch.device("cpu"))[:6]
    np.testing.assert_allclose(raw, plain["embedding"].numpy(), atol=1e-6)
    dim = raw.shape[1]
    centre = np.random.default_rng(1).normal(size=dim) * 0.1
    projection = np.random.default_rng(2).normal(size=(dim, dim))
    set_projection(model, centre, projection)
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = load_model(path)
    with torch.no_grad():
        out = loaded(x)
        unprojected = loaded.unprojected_embedding(x)
    np.testing.assert_allclose(unprojected.numpy(), raw, atol=1e-6)
    expected = (raw - centre) @ projection
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out["embedding"].numpy(), expected, atol=1e-5)
    for name in ("identity", "landmarks", "attributes", "pose"):
        torch.testing.assert_close(out[name], plain[name])


def test_model_files_written_before_the_projection_load_without_one(tmp_path: Path) -> None:
    model = MultiTaskNet(ModelConfig(num_identities=5, width=0.25))
    old = {k: v for k, v in model.state_dict().items() if not k.endswith((".center", ".projection"))}
    assert len(old) == len(model.state_dict()) - 2
    fresh = MultiTaskNet(ModelConfig(num_identities=5, width=0.25))
    set_projection(fresh, np.ones(fresh.config.embedding_dim), 2 * np.eye(fresh.config.embedding_dim))
    fresh.load_state_dict(old)
    assert torch.equal(fresh.heads["embedding"].projection, torch.eye(fresh.config.embedding_dim))
    assert not fresh.heads["embedding"].center.any()

"""Fit the verification embedding's projection after training, on the training identities.

DeepID2 scored pairs with a model fit on the training identities' features (Joint Bayesian) rather than with
plain cosine. Here the fit is within-identity whitening (WCCN): directions along which one person's faces vary
are shrunk, so cosine similarity weighs what tells people apart. It is linear, so it lives in the network
(``EmbeddingHead.project``) and every consumer of embeddings (verify, gallery, export) gets it unchanged.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInputError
from ..model.heads import no_projection
from ..model.multitask import MultiTaskNet


def fit_within_whitening(embeddings: np.ndarray, identities: np.ndarray,
                         shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre (D,) and projection (D,D) that whiten the within-identity scatter of ``embeddings`` (N,D).

    The scatter is regularised by ``shrinkage`` times its mean variance on the diagonal, so directions seen
    in few identities are not blown up. ``(e - centre) @ projection`` has identity within-identity scatter.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    classes, index = np.unique(np.asarray(identities), return_inverse=True)
    if x.ndim != 2 or len(x) != len(index):
        raise InvalidInputError(f"embeddings must be (N,D) with one identity each, got {x.shape} and {len(index)}")
    if len(classes) < 2 or len(classes) == len(x):
        raise InvalidInputError("fitting the projection needs at least two identities with two or more faces")
    if shrinkage < 0:
        raise InvalidInputError(f"shrinkage must be >= 0, got {shrinkage}")
    means = np.zeros((len(classes), x.shape[1]))
    np.add.at(means, index, x)
    means /= np.bincount(index)[:, None]
    within = x - means[index]
    scatter = within.T @ within / len(x)
    scatter += shrinkage * np.trace(scatter) / len(scatter) * np.eye(len(scatter))
    try:
        lower = np.linalg.cholesky(scatter)
    except np.linalg.LinAlgError:
        raise InvalidInputError("the within-identity scatter is singular (a direction no identity varies "
                                "along): fit with shrinkage > 0") from None
    return x.mean(axis=0), np.linalg.inv(lower).T


@torch.inference_mode()
def training_embeddings(model: MultiTaskNet, crops: np.ndarray, device: torch.device,
                        batch_size: int = 256) -> np.ndarray:
    """Unprojected embeddings (2N,D) of uint8 crops (N,S,S,3) and of their mirror images, in that order."""
    parts: list[list[np.ndarray]] = [[], []]
    for start in range(0, len(crops), batch_size):
        x = torch.from_numpy(crops[start:start + batch_size]).to(device).permute(0, 3, 1, 2).float()
        for part, view in zip(parts, (x, x.flip(3))):
            part.append(model.unprojected_embedding(view).float().cpu().numpy())
    return np.concatenate([np.concatenate(p) for p in parts])


def set_projection(model: MultiTaskNet, centre: np.ndarray | None, projection: np.ndarray | None) -> None:
    """Store a projection in the model's embedding head; ``None`` restores plain cosine (no projection)."""
    head = model.heads["embedding"]
    plain = no_projection(len(head.center))
    head.center.copy_(plain[0] if centre is None else torch.as_tensor(centre))
    head.projection.copy_(plain[1] if projection is None else torch.as_tensor(projection))

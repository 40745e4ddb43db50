"""Task heads on a feature vector: identity, embedding, landmarks, attributes and pose."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Neck(nn.Module):
    """Feature map(s) -> feature vector: flatten, fully connected, batch norm, PReLU (DeepID2's FC layer)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        self.act = nn.PReLU(out_features)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([m.flatten(1) for m in maps], dim=1)
        return self.act(self.bn(self.fc(self.drop(x))))


class IdentityHead(nn.Module):
    """Softmax classifier over training identities; with ``margin > 0`` a cosine classifier (ArcFace).

    Returns logits for plain softmax, or the cosines to the class centres for the margin variant (the
    margin needs the labels, so the loss applies it).
    """

    def __init__(self, in_features: int, num_classes: int, margin: float = 0.0) -> None:
        super().__init__()
        self.margin = margin
        self.fc = nn.Linear(in_features, num_classes, bias=margin <= 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.margin > 0:
            return F.linear(F.normalize(x, dim=1), F.normalize(self.fc.weight, dim=1))
        return self.fc(x)


def no_projection(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and projection that leave an embedding as it is (plain cosine)."""
    return torch.zeros(dim), torch.eye(dim)


class EmbeddingHead(nn.Module):
    """L2-normalised identity embedding used for verification (cosine similarity).

    ``forward`` gives the embedding training shapes; ``project`` maps it through a fixed linear projection fit
    after training (``facemtl.train.projection``: within-identity whitening on the training identities), the
    identity map until then.
    """

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)
        centre, projection = no_projection(dim)
        self.register_buffer("center", centre)
        self.register_buffer("projection", projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.bn(self.fc(x)), dim=1)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Model files and checkpoints written before the projection lack its buffers: load them as none."""
        centre, projection = no_projection(len(self.center))
        state_dict.setdefault(prefix + "center", centre)
        state_dict.setdefault(prefix + "projection", projection)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def project(self, embedding: torch.Tensor) -> torch.Tensor:
        """The verification embedding: centred, projected and L2-normalised again."""
        return F.normalize((embedding - self.center) @ self.projection, dim=1)


class LandmarkHead(nn.Module):
    """Five (x, y) points in crop pixels, predicted as offsets (in pixels) from the template points.

    Pixels rather than [0, 1] units keep the head's gradients on the same scale as the other heads'.
    """

    def __init__(self, in_features: int, template_px: np.ndarray) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, 10)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.register_buffer("template", torch.as_tensor(template_px, dtype=torch.float32).reshape(1, 5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.template + self.fc(x).view(-1, 5, 2)


def attribute_probabilities(logits: np.ndarray) -> np.ndarray:
    """The sigmoid of (N,A) attribute logits; an extreme logit gives 0 or 1 without an overflow warning."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-logits))


def expected_age(logits: torch.Tensor) -> torch.Tensor:
    """Age in years from the age head's logits over whole years 0..K-1: the distribution's expected value."""
    years = torch.arange(logits.shape[-1], dtype=torch.float32, device=logits.device)
    return torch.softmax(logits.float(), dim=-1) @ years


class LinearHead(nn.Module):
    """Logits for a fixed set of outputs (the 40 attributes, or the 5 head-pose classes)."""

    def __init__(self, in_features: int, outputs: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class MLPHead(nn.Module):
    """Logits through one hidden layer (linear, ReLU, dropout): a head that can bend where a linear one cannot.

    Its tensors are named apart from :class:`LinearHead`'s, so a linear head in a model file is never copied
    into it.
    """

    def __init__(self, in_features: int, hidden: int, outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

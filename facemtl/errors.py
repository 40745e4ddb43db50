"""Typed errors raised by facemtl: every user-facing failure is one of these, never a raw library traceback."""
from __future__ import annotations

from typing import Any, Sequence


class FacemtlError(Exception):
    """Base class of every error facemtl raises on purpose."""


class ImageDecodeError(FacemtlError, ValueError):
    """An input could not be read as an image (corrupt, truncated, empty, not an image, too large)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class InvalidInputError(FacemtlError, ValueError):
    """An argument to the Python API has the wrong type, dtype, shape or values."""


class WeightsError(FacemtlError):
    """A weights / model file is missing, corrupt, not a facemtl file or from an incompatible version."""


class DatasetError(FacemtlError):
    """A dataset folder or annotation file is missing or malformed."""


class ConfigError(FacemtlError, ValueError):
    """A training / evaluation configuration is invalid."""


class DeviceError(FacemtlError, RuntimeError):
    """The requested compute device is not available."""


class GalleryError(FacemtlError):
    """The face gallery database is unusable or holds embeddings of another model version."""


class OutputExistsError(FacemtlError, FileExistsError):
    """An output file already exists and `force` was not given."""


class CheckpointError(FacemtlError):
    """A training checkpoint is corrupt, partial or does not match the run."""


def check_mask(mask: Any, shape: Sequence[int], name: str = "mask") -> Any:
    """``mask`` itself if it is a boolean NumPy array or torch tensor of exactly ``shape``, else an
    :class:`InvalidInputError` (the one check behind every masked loss and masked metric)."""
    if str(getattr(mask, "dtype", None)) not in ("bool", "torch.bool") or tuple(mask.shape) != tuple(shape):
        raise InvalidInputError(f"{name} must be a boolean array of shape {tuple(shape)}, got "
                                f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    return mask

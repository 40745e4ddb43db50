"""Five-point face alignment: similarity transforms onto a canonical template and batched warps.

All faces of a photo are solved in one batched least-squares fit (Umeyama, 1991) and warped in one
``grid_sample`` call. Matrices map photo pixels to crop pixels (cv2 convention: a pixel's centre has
integer coordinates), so ``cv2.warpAffine(photo, M, (size, size))`` gives the same crop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidInputError

TEMPLATE_SIZE = 112
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
"""The standard 112x112 five-point template (eyes, nose tip, mouth corners; image-left point first)."""


def template(size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The five template points for a ``size`` x ``size`` crop (the 112 template scaled)."""
    return TEMPLATE_112 * (size / TEMPLATE_SIZE)


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src (N,K,2) onto dst.

    ``dst`` is (K,2) or (N,K,2). Returns (N,2,3) matrices. Umeyama's closed form, reflection excluded.
    """
    src = src.double()
    dst = dst.double().expand_as(src)
    mu_s, mu_d = src.mean(dim=1, keepdim=True), dst.mean(dim=1, keepdim=True)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs ** 2).sum(dim=(1, 2)) / src.shape[1]
    if bool((var_s <= 1e-12).any()):
        raise InvalidInputError("landmarks are degenerate (all points coincide); cannot align")
    cov = xd.transpose(1, 2) @ xs / src.shape[1]
    u, d, vt = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u) * torch.linalg.det(vt))
    s = torch.ones_like(d)
    s[:, 1] = torch.where(sign < 0, -1.0, 1.0)
    rot = u @ torch.diag_embed(s) @ vt
    scale = (d * s).sum(dim=1) / var_s
    trans = mu_d.squeeze(1) - scale[:, None] * (rot @ mu_s.transpose(1, 2)).squeeze(2)
    return torch.cat([scale[:, None, None] * rot, trans[:, :, None]], dim=2)


def invert_affine(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse of (N,2,3) affine matrices."""
    lin = matrices[:, :, :2]
    inv = torch.linalg.inv(lin)
    return torch.cat([inv, -(inv @ matrices[:, :, 2:])], dim=2)


def apply_affine(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map (N,K,2) points through (N,2,3) matrices."""
    return points @ matrices[:, :, :2].transpose(1, 2) + matrices[:, None, :, 2]


def warp_crops(image: torch.Tensor, matrices: torch.Tensor, size: int) -> torch.Tensor:
    """Warp one (3,H,W) float photo into N (3,size,size) crops with bilinear sampling, zeros outside.

    The N sampling grids are stacked along the height so one ``grid_sample`` call serves every face
    without copying the photo N times.
    """
    n = matrices.shape[0]
    h, w = image.shape[1], image.shape[2]
    coords = torch.arange(size, dtype=matrices.dtype, device=matrices.device)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    crop_pts = torch.stack([gx, gy], dim=-1).reshape(1, -1, 2).expand(n, -1, -1)
    photo_pts = apply_affine(invert_affine(matrices), crop_pts)
    norm = torch.tensor([w, h], dtype=photo_pts.dtype, device=photo_pts.device)
    grid = ((photo_pts + 0.5) / norm * 2 - 1).reshape(1, n * size, size, 2).to(image.dtype)
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0].reshape(3, n, size, size).transpose(0, 1)


def to_photo(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N,K,2) crop pixels back into photo pixels through the inverse of each (2,3) photo->crop matrix:
    the one crop -> photo mapping (landmarks, refinement, evaluation)."""
    lin = np.linalg.inv(matrices[:, :, :2])
    return np.einsum("nij,nkj->nki", lin, points - matrices[:, None, :, 2])


@dataclass
class AlignedFaces:
    """Aligned crops of one photo and the transforms that made them."""

    crops: np.ndarray
    """(N, size, size, 3) uint8 RGB crops."""
    matrices: np.ndarray
    """(N, 2, 3) float64: photo pixel -> crop pixel."""
    size: int

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Map (N,K,2) crop coordinates back into photo pixels."""
        return to_photo(self.matrices, np.asarray(points, np.float64))

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Map (N,K,2) photo pixels into crop coordinates."""
        return apply_affine(torch.from_numpy(self.matrices), torch.as_tensor(points, dtype=torch.float64)).numpy()


MAX_COORDINATE = 1e7
"""Landmarks beyond this many pixels cannot belong to a photo; larger values would make the warp singular."""


def _check_landmarks(landmarks5: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(5,2) or (N,5,2) finite landmarks -> float64 tensor (N,5,2)."""
    try:
        pts = torch.as_tensor(np.asarray(landmarks5, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"landmarks5 must be numbers of shape (5,2) or (N,5,2): {exc}") from None
    if pts.ndim == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[1:] != (5, 2):
        raise InvalidInputError(f"landmarks5 must have shape (5,2) or (N,5,2), got {tuple(pts.shape)}")
    if not bool(torch.isfinite(pts).all()):
        raise InvalidInputError("landmarks5 contain NaN or infinite values")
    if bool((pts.abs() > MAX_COORDINATE).any()):
        raise InvalidInputError(f"landmarks5 lie beyond {MAX_COORDINATE:g} px: not points of a photo")
    return pts


def align(image: np.ndarray, landmarks5: np.ndarray, size: int = TEMPLATE_SIZE, padding: int = 0,
          device: str | torch.device = "cpu") -> AlignedFaces:
    """Crop every face of ``image`` (RGB uint8 HxWx3) aligned onto the five-point template.

    ``landmarks5`` is (5,2) or (N,5,2) in photo pixels (image-left eye first). ``padding`` adds that many
    pixels of context on every side (the template stays at ``size`` scale, shifted by ``padding``), which
    training uses to jitter crops without black borders. Returns crops of ``size + 2 * padding`` pixels,
    the photo->crop matrices and the inverse mapping for points.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 \
            or 0 in image.shape[:2]:
        raise InvalidInputError("image must be an RGB uint8 array of shape (H, W, 3); use facemtl.load_image")
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise InvalidInputError(f"size must be an integer >= 8, got {size!r}")
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise InvalidInputError(f"padding must be a non-negative integer, got {padding!r}")
    pts = _check_landmarks(landmarks5)
    out = int(size + 2 * padding)
    matrices = similarity_transform(pts, torch.from_numpy(template(size) + padding))
    if len(pts) == 0:
        return AlignedFaces(np.zeros((0, out, out, 3), np.uint8), matrices.numpy(), out)
    photo = torch.from_numpy(np.array(image, copy=not image.flags.writeable)).to(device).permute(2, 0, 1).float()
    crops = warp_crops(photo, matrices.to(device).float(), out)
    crops = crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return AlignedFaces(crops, matrices.numpy(), out)

"""Turn a volume in modality units into a model input: resample, window, scale to [0, 1].

The result is a deterministic function of the voxels, their spacing, the file's default
window and photometric interpretation, and the parameters here, so a caller can cache it
under the files' content plus `volume_preprocessing_key(...)`; change the pipeline and
`VOLUME_PREPROCESSING_VERSION` must change with it.

Order: resample in modality units (interpolating HU, not clipped grey levels) -> window ->
[0, 1] -> invert MONOCHROME1 -> pad or crop to a shape when a spacing fixed the scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Resize, ResizeWithPadOrCrop, ScaleIntensityRange

from fedmed.data.series import Volume
from fedmed.errors import DataError

__all__ = [
    "ROBUST_PERCENTILES",
    "VOLUME_PREPROCESSING_VERSION",
    "preprocess_volume",
    "resampled_shape",
    "volume_preprocessing_key",
]

VOLUME_PREPROCESSING_VERSION = 1
ROBUST_PERCENTILES = (0.5, 99.5)  # the min-max used when no window is known ignores outliers


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, int, int]:
    """The (depth, height, width) that covers the same extent at `target_spacing` (at least 1 each)."""
    _check_triple("target_spacing", target_spacing)
    depth, height, width = (max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target_spacing, strict=False))
    return (depth, height, width)


def volume_preprocessing_key(
    *,
    target_spacing: Sequence[float] | None,
    target_shape: Sequence[int] | None,
    window: tuple[float, float] | None,
) -> str:
    """A text naming the pipeline version and parameters, for a cache key beside the files' hash."""
    spacing = "none" if target_spacing is None else ",".join(f"{float(v)!r}" for v in target_spacing)
    shape = "none" if target_shape is None else ",".join(str(int(v)) for v in target_shape)
    chosen = "file" if window is None else f"{float(window[0])!r},{float(window[1])!r}"
    return f"fedmed-volume:v{VOLUME_PREPROCESSING_VERSION}:spacing={spacing}:shape={shape}:window={chosen}"


def preprocess_volume(
    volume: Volume,
    *,
    target_spacing: Sequence[float] | None = None,
    target_shape: Sequence[int] | None = None,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Resample and window `volume` into float32 (1, D, H, W) in [0, 1], high values bright.

    Args:
        target_spacing: (z, y, x) mm to resample to; the shape follows from the extent.
        target_shape: (depth, height, width). Alone, the volume is resized (stretched) to it;
            with `target_spacing`, the resampled volume is centre-padded (with 0, i.e. below
            the window) or cropped to it, so that the millimetre scale is kept.
        window: (center, width) in modality units (HU for CT), e.g. (40, 400) soft tissue.
            Without it the file's VOI window is used, else the 0.5-99.5 percentile range.

    Raises:
        ValueError: a spacing, shape or window that is not positive.
        DataError: the volume is blank (one value everywhere) and no window was given.
    """
    if target_shape is not None:
        _check_triple("target_shape", target_shape)
    if window is not None and not (np.isfinite(window[0]) and np.isfinite(window[1]) and window[1] > 0):
        raise ValueError(f"window must be (center, width) with a positive width, got {window}")
    image = torch.from_numpy(np.ascontiguousarray(volume.voxels, dtype=np.float32))[None]
    shape = tuple(volume.voxels.shape)
    if target_spacing is not None:
        image = _resize(image, resampled_shape(shape, volume.spacing, target_spacing))
    elif target_shape is not None:
        image = _resize(image, tuple(int(v) for v in target_shape))

    chosen = window if window is not None else volume.window
    if chosen is not None:
        center, width = chosen
        scale = ScaleIntensityRange(
            a_min=center - width / 2, a_max=center + width / 2, b_min=0.0, b_max=1.0, clip=True
        )
    else:
        low, high = np.percentile(image.numpy(), ROBUST_PERCENTILES)
        if high <= low:
            raise DataError(
                f"{volume.series.identity}: blank volume, every voxel near {low:g} and no VOI window "
                "(0028,1050)/(0028,1051); give a window or leave the series out"
            )
        scale = ScaleIntensityRange(a_min=float(low), a_max=float(high), b_min=0.0, b_max=1.0, clip=True)
    image = _as_tensor(scale(image))
    if volume.photometric == "MONOCHROME1":
        image = 1.0 - image
    if target_spacing is not None and target_shape is not None:
        image = _as_tensor(ResizeWithPadOrCrop(spatial_size=tuple(int(v) for v in target_shape))(image))
    return np.ascontiguousarray(image.numpy(), dtype=np.float32)


def _resize(image: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Area-average the axes that shrink (no aliasing), then trilinear for those that grow."""
    current = tuple(image.shape[1:])
    if current == shape:
        return image
    shrunk = tuple(min(c, s) for c, s in zip(current, shape, strict=False))
    if shrunk != current:
        image = _as_tensor(Resize(spatial_size=shrunk, mode="area")(image))
    if shrunk != shape:
        image = _as_tensor(Resize(spatial_size=shape, mode="trilinear", align_corners=False)(image))
    return image


def _as_tensor(image: torch.Tensor) -> torch.Tensor:
    """MONAI returns a MetaTensor; plain tensors keep the pipeline free of tracked metadata."""
    return image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)


def _check_triple(name: str, values: Sequence[float]) -> None:
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} must be three positive numbers (z, y, x), got {tuple(values)}")

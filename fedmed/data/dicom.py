"""Read one DICOM file into a normalised grayscale array and a few bias-relevant tags.

Hospital archives are messy, so every failure becomes one `DicomReadError` with a short,
stable reason (used to group skipped files) and never another exception type.

Pixel pipeline (DICOM PS3.3 C.11 and PS3.4 Annex N, the standard's own order):
stored values -> Modality LUT / rescale (C.11.1) -> VOI windowing (C.11.2, first window when
multi-valued) or, without a window, min-max -> [0, 1] -> invert MONOCHROME1 -> middle frame
of a multi-frame image -> resize to (size, size) with MONAI.

Colour images (SamplesPerPixel > 1) are rejected, not converted: the tasks fedmed trains on
are grayscale modalities, and an RGB object in a radiology folder is usually a screenshot or
a secondary capture that should not reach a model.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Resize
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_windowing, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from fedmed.errors import DataError

__all__ = [
    "DicomMetadata",
    "DicomReadError",
    "decode_pixels",
    "read_dataset",
    "read_dicom_image",
    "read_dicom_metadata",
]

# Elements whose presence tells a forced read of a real DICOM object from random bytes.
_EVIDENCE_KEYWORDS = ("SOPClassUID", "Rows", "PixelData")


class DicomReadError(DataError):
    """A DICOM file cannot be turned into an image; `reason` is short and stable for grouping."""

    def __init__(self, path: Path | str, reason: str, detail: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        message = f"Cannot read DICOM file {self.path}: {reason}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


@dataclass(frozen=True)
class DicomMetadata:
    """Tags used for subgroup and site analyses; None where absent or invalid.

    `patient_id` stays at the site: it only counts distinct patients, so that a subgroup
    metric is released for at least `min_cell_size` people, not images.
    """

    sex: str | None = None
    age_years: float | None = None
    manufacturer: str | None = None
    model: str | None = None
    modality: str | None = None
    body_part: str | None = None
    patient_id: str | None = None


def read_dicom_image(path: Path, *, size: int, channels: int = 1) -> np.ndarray:
    """Decode `path` into a float32 (channels, size, size) array in [0, 1], high values bright.

    `channels` is 1 (luminance) or 3 (RGB); a grayscale image seen as RGB repeats its one
    channel, so grayscale and colour sites can train one model.

    Raises:
        DicomReadError: for any file that cannot become such an image; the message names
            the file and the reason (and, for compressed data, the package to install).
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    ds = read_dataset(path, stop_before_pixels=False)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        stored = decode_pixels(path, ds, frame=frames // 2)  # the middle frame of a multi-frame image
        image = _to_unit_range(path, ds, stored[..., 0])
        resized = _resize(image, size)[None]
        return np.repeat(resized, channels, axis=0) if channels == 3 else resized
    except DicomReadError:
        raise
    except Exception as exc:  # pydicom raises many types on defective values
        raise DicomReadError(path, "invalid image attributes", _short(exc)) from exc


def read_dicom_metadata(ds_or_path: Dataset | Path | str) -> DicomMetadata:
    """Read sex, age, scanner, modality and patient id tags; an invalid value gives None, never an error.

    A path is read without pixel data. Age comes from PatientAge (0010,1010), else from
    PatientBirthDate (0010,0030) and StudyDate (0008,0020).

    Raises:
        DicomReadError: only when a path given is not a readable DICOM file.
    """
    if isinstance(ds_or_path, Dataset):
        ds = ds_or_path
    else:
        ds = read_dataset(Path(ds_or_path), stop_before_pixels=True)
    sex = _text(ds, "PatientSex")
    sex = sex.upper() if sex else None
    return DicomMetadata(
        sex=sex if sex in ("M", "F", "O") else None,
        age_years=_age_years(ds),
        manufacturer=_text(ds, "Manufacturer"),
        model=_text(ds, "ManufacturerModelName"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        patient_id=_text(ds, "PatientID"),
    )


def parse_dicom_age(value: str | None) -> float | None:
    """Parse an Age String (PS3.5 Table 6.2-1, "nnnD/W/M/Y") into years, or None."""
    if not value:
        return None
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(value).upper())
    if not match:
        return None
    years_per_unit = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
    return _plausible_age(int(match.group(1)) * years_per_unit[match.group(2)])


# --- reading -------------------------------------------------------------------------------


def read_dataset(path: Path, *, stop_before_pixels: bool) -> Dataset:
    """Read with the standard's preamble check, then once more with force=True without it."""
    if not path.is_file():
        raise DicomReadError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass  # no 128-byte preamble or 'DICM' prefix: common in old archives
    except Exception as exc:
        raise DicomReadError(path, "unreadable or truncated DICOM file", _short(exc)) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except Exception as exc:
        raise DicomReadError(path, "not a DICOM file", _short(exc)) from exc
    if not _looks_like_dicom(ds):
        raise DicomReadError(path, "not a DICOM file")
    _infer_transfer_syntax(ds)
    return ds


def _looks_like_dicom(ds: Dataset) -> bool:
    """True if a forced read found real image elements, not bytes of another file format."""
    try:
        return any(keyword in ds for keyword in _EVIDENCE_KEYWORDS)
    except Exception:
        return False


def _infer_transfer_syntax(ds: Dataset) -> None:
    """Give a headerless dataset the transfer syntax it was actually parsed with."""
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def decode_pixels(path: Path, ds: Dataset, *, frame: int | None = None) -> np.ndarray:
    """The stored values of one frame (rows, columns, samples), or of all (frames, rows, columns, samples).

    Values are as pydicom decodes them, before any Modality LUT; `path` only names the file
    in errors.

    Raises:
        DicomReadError: no pixel data, no decoder installed, truncated or undecodable data.
    """
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomReadError(path, "no pixel data", "no (7FE0,0010) Pixel Data element")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise DicomReadError(
            path,
            "colour image not supported",
            f"(0028,0002) Samples per Pixel is {samples}; fedmed reads grayscale images only",
        )
    syntax = _transfer_syntax(ds)
    if syntax is not None and syntax.is_compressed:
        decoder = get_decoder(syntax)
        if not decoder.is_available:
            raise DicomReadError(
                path,
                f"no decoder for transfer syntax {syntax.name} ({syntax})",
                "install one of: " + "; ".join(decoder.missing_dependencies),
            )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        if frame is not None and frames > 1:
            ds.pixel_array_options(index=frame)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:
        truncated = "less than expected" in str(exc)  # pydicom's words for short pixel data
        reason = "pixel data is truncated" if truncated else "pixel data cannot be decoded"
        raise DicomReadError(path, reason, _short(exc)) from exc
    if frame is not None or frames == 1:
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or min(arr.shape) < 1:
            raise DicomReadError(path, "pixel data is not a 2-D image", f"shape {arr.shape}")
        return arr if frame is not None else arr[None]
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or min(arr.shape) < 1:
        raise DicomReadError(path, "pixel data is not a stack of 2-D frames", f"shape {arr.shape}")
    return arr


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return None
    return UID(str(meta.TransferSyntaxUID))


def _to_unit_range(path: Path, ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Apply modality LUT and window, then scale to [0, 1] and undo MONOCHROME1 inversion."""
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if not np.isfinite(values).all():
        raise DicomReadError(path, "invalid pixel values", "NaN or infinite after rescale")
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            windowed = apply_windowing(values, ds, index=0)
            # apply_windowing maps onto the stored range, not [0, 1]: find its ends by
            # windowing two extreme values with the same dataset.
            with np.errstate(over="ignore"):
                low, high = apply_windowing(np.array([-1e300, 1e300]), ds, index=0)
        except Exception as exc:
            raise DicomReadError(
                path, "invalid window", f"(0028,1050)/(0028,1051): {_short(exc)}"
            ) from exc
        image = (windowed - low) / (high - low) if high > low else np.zeros_like(windowed)
    else:
        low, high = float(values.min()), float(values.max())
        if high <= low:
            raise DicomReadError(path, "blank image", f"every pixel equals {low:g}")
        image = (values - low) / (high - low)
    image = np.clip(image, 0.0, 1.0)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    elif photometric != "MONOCHROME2":
        raise DicomReadError(
            path,
            "colour image not supported",
            f"(0028,0004) Photometric Interpretation is {photometric}",
        )
    return image.astype(np.float32)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize with area averaging when shrinking (no aliasing), bilinear when enlarging.

    Non-square images are stretched, not padded: padding would add a border the model
    could learn per site.
    """
    if image.shape == (size, size):
        return np.ascontiguousarray(image, dtype=np.float32)
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    resize = (
        Resize(spatial_size=(size, size), mode="area")
        if shrinking
        else Resize(spatial_size=(size, size), mode="bilinear", align_corners=False)
    )
    out = resize(torch.from_numpy(image)[None])
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return np.clip(out[0].numpy(), 0.0, 1.0).astype(np.float32)


# --- metadata ------------------------------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str | None:
    """A tag's value as stripped text, or None when absent, empty or undecodable."""
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else None
        text = str(value).strip() if value is not None else ""
    except Exception:
        return None
    return text or None


def _age_years(ds: Dataset) -> float | None:
    age = parse_dicom_age(_text(ds, "PatientAge"))
    if age is not None:
        return age
    birth = _parse_date(_text(ds, "PatientBirthDate"))
    study = _parse_date(_text(ds, "StudyDate"))
    if birth is None or study is None:
        return None
    return _plausible_age(_years_between(birth, study))


def _parse_date(value: str | None) -> dt.date | None:
    """Parse a DA value (PS3.5 Table 6.2-1, YYYYMMDD), or None."""
    if not value or not re.fullmatch(r"\d{8}", value):
        return None
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _years_between(birth: dt.date, later: dt.date) -> float:
    """Completed years plus the fraction of the year since the last birthday."""
    years = later.year - birth.year - ((later.month, later.day) < (birth.month, birth.day))
    last = _add_years(birth, years)
    following = _add_years(birth, years + 1)
    return years + (later - last).days / (following - last).days


def _add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February in a non-leap year
        return day.replace(year=day.year + years, day=28)


def _plausible_age(years: float) -> float | None:
    return round(years, 4) if 0.0 <= years <= 150.0 else None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

"""Read one DICOM file into a normalised array and a few bias-relevant tags.

Hospital archives are messy, so every failure becomes one `DicomReadError` with a short,
stable reason (used to group skipped files) and never another exception type. What pydicom
and its decoder plugins log or warn meanwhile is captured (`fedmed.data.logs`), never printed.

Grayscale pipeline (DICOM PS3.3 C.11 and PS3.4 Annex N, the standard's own order):
stored values -> Modality LUT / rescale (C.11.1) -> VOI windowing (C.11.2, first window when
multi-valued) or, without a window, min-max -> [0, 1] -> invert MONOCHROME1 -> middle frame
of a multi-frame image -> resize to (size, size) with MONAI.

Colour (PS3.3 C.7.6.3.1.2): RGB, YBR_FULL, YBR_FULL_422 and the JPEG / JPEG 2000 colour
spaces come out of pydicom's decoding as RGB (it converts YBR once, itself); PALETTE COLOR
goes through its lookup table (`apply_color_lut`). Colour values are scaled by their bit
range, not windowed (VOI LUTs are for grayscale), and seen as one channel they become
luminance (ITU-R BT.601).

The header's declared size is checked before anything is decoded (`MAX_SIDE`,
`MAX_FRAME_BYTES`, `MAX_TOTAL_BYTES`), and so is a JPEG or JPEG 2000 codestream's own: a
few hundred bytes can declare an image of terabytes (a decompression bomb).
"""

from __future__ import annotations

import datetime as dt
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Resize
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames, get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing, as_pixel_options, get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000TransferSyntaxes,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from fedmed.data import jpeg12
from fedmed.data.logs import Diagnostics, capture_diagnostics, capture_native_stderr
from fedmed.errors import DataError

jpeg12.register()  # 12-bit JPEG Extended without the GPL plugin

__all__ = [
    "MAX_FRAME_BYTES",
    "MAX_SIDE",
    "MAX_TOTAL_BYTES",
    "DicomMetadata",
    "DicomReadError",
    "decode_pixels",
    "read_dataset",
    "read_dicom_image",
    "read_dicom_metadata",
]

MAX_SIDE = 32768
"""Largest Rows or Columns read (the format allows 65535): a bigger image is a bomb or needs tiling."""
MAX_FRAME_BYTES = 1 << 30
"""Largest decoded frame (rows x columns x samples x bytes per sample), 1 GiB."""
MAX_TOTAL_BYTES = 4 << 30
"""Largest decoded multi-frame stack when all frames are read at once, 4 GiB."""

# Elements whose presence tells a forced read of a real DICOM object from random bytes.
_EVIDENCE_KEYWORDS = ("SOPClassUID", "Rows", "PixelData")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")

# Plugins tried first, in this order, where pydicom's own order is worse: its JPEG 2000 order
# ends in Pillow, which refuses large images as decompression bombs, and GDCM writes its
# errors straight to the process's stderr; pyjpegls is the current CharLS. Other available
# plugins follow in pydicom's order.
_PREFERRED_PLUGINS: dict[str, tuple[str, ...]] = {
    JPEG2000Lossless: ("pylibjpeg", "gdcm", "pillow"),
    JPEG2000: ("pylibjpeg", "gdcm", "pillow"),
    JPEGLSLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEGLSNearLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
}

# BT.601 luma weights (ITU-R BT.601-7, 2.5.1), the ones DICOM's YBR_FULL uses (PS3.3 C.7.6.3.1.2).
_LUMA = np.array([0.299, 0.587, 0.114])


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
    with capture_diagnostics(path) as diagnostics:
        ds = read_dataset(path, stop_before_pixels=False)
        try:
            frames = _number_of_frames(path, ds)
            # the middle frame of a multi-frame image
            stored, photometric, bits = _decode(path, ds, frame=frames // 2, diagnostics=diagnostics)
            if photometric in _GRAYSCALE:
                image = _to_unit_range(path, ds, stored[..., 0], photometric)[None]
                if channels == 3:
                    image = np.repeat(image, 3, axis=0)
            else:
                rgb = _to_rgb(path, ds, stored, photometric, bits)
                image = (rgb @ _LUMA)[None] if channels == 1 else np.moveaxis(rgb, -1, 0)
            return _resize(image.astype(np.float32), size)
        except DicomReadError:
            raise
        except Exception as exc:  # pydicom raises many types on defective values
            raise DicomReadError(path, "invalid image attributes", _explained(exc, diagnostics)) from exc


def read_dicom_metadata(ds_or_path: Dataset | Path | str) -> DicomMetadata:
    """Read sex, age, scanner, modality and patient id tags; an invalid value gives None, never an error.

    A path is read without pixel data. Age comes from PatientAge (0010,1010), else from
    PatientBirthDate (0010,0030) and StudyDate (0008,0020).

    Raises:
        DicomReadError: only when a path given is not a readable DICOM file.
    """
    ds = (
        ds_or_path if isinstance(ds_or_path, Dataset) else read_dataset(Path(ds_or_path), stop_before_pixels=True)
    )
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
    path = Path(path)
    if not path.is_file():
        raise DicomReadError(path, "file not found")
    with capture_diagnostics(path) as diagnostics:
        try:
            return dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            pass  # no 128-byte preamble or 'DICM' prefix: common in old archives
        except Exception as exc:
            raise DicomReadError(path, "unreadable or truncated DICOM file", _explained(exc, diagnostics)) from exc
        try:
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

    Values are as pydicom decodes them, before any Modality LUT: grayscale and PALETTE COLOR
    indices have one sample; colour has three, in RGB whatever the stored colour space (pydicom
    converts YBR on decoding). The header's and the codestream's declared sizes are checked
    first. `path` only names the file in errors.

    Raises:
        DicomReadError: no pixel data, an absurd or too large declared size, no decoder
            installed, truncated or undecodable data.
    """
    with capture_diagnostics(path) as diagnostics:
        return _decode(path, ds, frame=frame, diagnostics=diagnostics)[0]


def _decode(path: Path, ds: Dataset, *, frame: int | None, diagnostics: Diagnostics) -> tuple[np.ndarray, str, int]:
    """`decode_pixels`, plus the photometric interpretation and bits stored of what it returns."""
    keywords = [k for k in _PIXEL_KEYWORDS if k in ds]
    if not keywords:
        raise DicomReadError(path, "no pixel data", "no (7FE0,0010) Pixel Data element")
    syntax = _transfer_syntax(ds)
    frames = _number_of_frames(path, ds)
    samples = _check_declared_size(path, ds, keyword=keywords[0], frames=frames, frame=frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2" if samples == 1 else "RGB")).strip().upper()
    if syntax is None:  # read_dataset always sets one; a caller's own dataset may lack it
        raise DicomReadError(path, "no transfer syntax", "no (0002,0010) Transfer Syntax UID in the file meta")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomReadError(
            path,
            f"no decoder for transfer syntax {syntax.name} ({syntax})",
            "pydicom decodes no such pixel data; convert the file to a standard syntax first",
        ) from None
    if syntax.is_compressed and not decoder.is_available:
        raise DicomReadError(
            path,
            f"no decoder for transfer syntax {syntax.name} ({syntax})",
            "install one of: " + "; ".join(decoder.missing_dependencies),
        )
    plugins = _plugin_order(syntax, decoder.available_plugins) if syntax.is_compressed else [""]
    twelve_bit = syntax == JPEGExtended12Bit and int(ds.get("BitsStored", 8) or 8) > 8
    if twelve_bit and not {"imagecodecs", "pylibjpeg"} & set(plugins):
        raise DicomReadError(
            path,
            f"no decoder for transfer syntax {syntax.name} ({syntax})",
            f"its (0028,0101) Bits Stored is {ds.BitsStored}: GDCM and Pillow decode 8-bit JPEG Extended only; "
            "install imagecodecs (BSD-3-Clause), or decompress the file first (dcmtk: dcmdjpeg IN OUT)",
        )
    if twelve_bit:
        plugins = [name for name in plugins if name in ("imagecodecs", "pylibjpeg")]
    if syntax.is_encapsulated:
        _check_codestreams(path, ds, syntax, frames=frames, frame=frame, samples=samples)

    failures = []
    for plugin in plugins:
        try:
            with capture_native_stderr(diagnostics) if plugin else nullcontext():
                arr, properties = decoder.as_array(
                    ds, index=frame if frames > 1 else None, decoding_plugin=plugin, as_rgb=True,
                    **as_pixel_options(ds),
                )
            break
        except Exception as exc:
            failures.append((plugin, exc))
    else:
        plugin, exc = failures[-1]
        if len(failures) == 1 and "less than expected" in str(exc):  # pydicom's words for short pixel data
            raise DicomReadError(path, "pixel data is truncated", _explained(exc, diagnostics)) from exc
        detail = "; ".join(
            f"{name}: {_plugin_said(name, error)}" if name else _short(error) for name, error in failures
        )
        raise DicomReadError(path, "pixel data cannot be decoded", _explained(detail, diagnostics)) from exc

    photometric = str(properties.get("photometric_interpretation", photometric)).strip().upper()
    bits = int(properties.get("bits_stored", ds.get("BitsStored", 8)) or 8)
    if frame is not None or frames == 1:
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or min(arr.shape) < 1:
            raise DicomReadError(path, "pixel data is not a 2-D image", f"shape {arr.shape}")
        arr = arr if frame is not None else arr[None]
    else:
        if arr.ndim == 3 and samples == 1:
            arr = arr[..., None]
        if arr.ndim != 4 or min(arr.shape) < 1:
            raise DicomReadError(path, "pixel data is not a stack of 2-D frames", f"shape {arr.shape}")
    if arr.shape[-1] == 3 and photometric != "RGB":
        raise DicomReadError(
            path,
            "colour space not supported",
            f"(0028,0004) Photometric Interpretation is {photometric}; fedmed reads RGB, YBR_FULL, "
            "YBR_FULL_422 and the JPEG and JPEG 2000 colour spaces",
        )
    if arr.shape[-1] == 1 and photometric not in (*_GRAYSCALE, "PALETTE COLOR"):
        raise DicomReadError(
            path,
            "photometric interpretation not supported",
            f"(0028,0004) Photometric Interpretation is {photometric} with one sample per pixel",
        )
    return arr, photometric, bits


def _plugin_order(syntax: UID, available: list[str]) -> list[str]:
    preferred = [name for name in _PREFERRED_PLUGINS.get(syntax, ()) if name in available]
    return preferred + [name for name in available if name not in preferred]


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return None
    return UID(str(meta.TransferSyntaxUID))


def _number_of_frames(path: Path, ds: Dataset) -> int:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:
        raise DicomReadError(path, "invalid image attributes", f"(0028,0008) Number of Frames: {_short(exc)}") from exc
    return max(frames, 1)  # pydicom, too, reads 0 as one frame


# --- declared sizes, checked before decoding -----------------------------------------------


def _check_declared_size(path: Path, ds: Dataset, *, keyword: str, frames: int, frame: int | None) -> int:
    """Refuse an absurd or too large image from its Image Pixel module (PS3.3 C.7.6.3) alone.

    Returns Samples per Pixel.
    """
    values = {}
    for tag, name in (("(0028,0010)", "Rows"), ("(0028,0011)", "Columns"), ("(0028,0100)", "BitsAllocated")):
        if name == "BitsAllocated" and keyword != "PixelData":
            values[name] = 32 if keyword == "FloatPixelData" else 64
            continue
        try:
            value = ds.get(name)
            values[name] = None if value is None else int(value)
        except Exception as exc:
            raise DicomReadError(path, "invalid image attributes", f"{tag} {name}: {_short(exc)}") from exc
        if values[name] is None:
            raise DicomReadError(
                path, "missing image attributes", f"no {tag} {name}; the file's Image Pixel module is incomplete"
            )
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except Exception as exc:
        raise DicomReadError(path, "invalid image attributes", f"(0028,0002) Samples per Pixel: {_short(exc)}") from exc
    rows, columns, bits = values["Rows"], values["Columns"], values["BitsAllocated"]
    if samples not in (1, 3):
        raise DicomReadError(
            path, "invalid image attributes", f"(0028,0002) Samples per Pixel is {samples}; DICOM images have 1 or 3"
        )
    if bits not in (1, 8, 16, 32, 64):
        raise DicomReadError(
            path, "invalid image attributes", f"(0028,0100) Bits Allocated is {bits}; expected 1, 8, 16, 32 or 64"
        )
    if rows < 1 or columns < 1:
        raise DicomReadError(
            path, "invalid image size", f"(0028,0010) Rows is {rows} and (0028,0011) Columns is {columns}"
        )
    if max(rows, columns) > MAX_SIDE:
        raise DicomReadError(
            path,
            "image too large",
            f"(0028,0010) Rows {rows} x (0028,0011) Columns {columns}: more than fedmed's {MAX_SIDE} "
            "pixels a side (MAX_SIDE); a decompression bomb, or a whole-slide image to tile first",
        )
    frame_bytes = rows * columns * samples * max(bits // 8, 1)  # 1-bit data decodes to a byte a pixel
    if frame_bytes > MAX_FRAME_BYTES:
        raise DicomReadError(
            path,
            "image too large",
            f"(0028,0010) Rows {rows} x (0028,0011) Columns {columns} x (0028,0002) Samples {samples} x "
            f"(0028,0100) {bits} bits = {_gib(frame_bytes)} a frame, above fedmed's {_gib(MAX_FRAME_BYTES)} "
            "(MAX_FRAME_BYTES)",
        )
    if frame is None and frame_bytes * frames > MAX_TOTAL_BYTES:
        raise DicomReadError(
            path,
            "image too large",
            f"(0028,0008) Number of Frames {frames} x {_gib(frame_bytes)} a frame = {_gib(frame_bytes * frames)}, "
            f"above fedmed's {_gib(MAX_TOTAL_BYTES)} for all frames at once (MAX_TOTAL_BYTES); read frame by frame",
        )
    if frame is not None and not 0 <= frame < frames:
        raise ValueError(f"frame must be in 0..{frames - 1} for {path}, got {frame}")
    return samples


def _check_codestreams(path: Path, ds: Dataset, syntax: UID, *, frames: int, frame: int | None, samples: int) -> None:
    """Refuse a JPEG, JPEG-LS or JPEG 2000 frame whose own header declares another or a huge size.

    Decoders allocate what the codestream declares (JPEG: SOF, ISO/IEC 10918-1 B.2.2;
    JPEG-LS: SOF55, 14495-1 C.2.2; JPEG 2000: SIZ, 15444-1 A.5.1), not what the DICOM header says.
    """
    if syntax in JPEG2000TransferSyntaxes:
        parse, kind = _j2k_size, "JPEG 2000"
    elif syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        parse, kind = _jpeg_size, "JPEG"
    else:
        return
    try:
        if frame is None:
            encoded = generate_frames(ds.PixelData, number_of_frames=frames)
        else:
            encoded = iter([get_frame(ds.PixelData, frame, number_of_frames=frames)])
        for index, data in enumerate(encoded):
            size = parse(bytes(data[:65536]))
            if size is not None:
                _check_codestream_size(path, ds, kind, frame if frame is not None else index, *size)
    except DicomReadError:
        raise
    except Exception:
        return  # the fragments cannot be found: decoding says so, with pydicom's own words


def _check_codestream_size(
    path: Path, ds: Dataset, kind: str, index: int, rows: int, columns: int, components: int, precision: int
) -> None:
    declared = f"the {kind} codestream of frame {index} declares {columns} x {rows} pixels x {components} components"
    frame_bytes = rows * columns * max(components, 1) * (1 if precision <= 8 else 2 if precision <= 16 else 4)
    if max(rows, columns) > MAX_SIDE or frame_bytes > MAX_FRAME_BYTES:
        raise DicomReadError(
            path,
            "image too large",
            f"{declared} ({_gib(frame_bytes)} decoded), above fedmed's limits ({MAX_SIDE} a side, "
            f"{_gib(MAX_FRAME_BYTES)} a frame): a decompression bomb",
        )
    if rows and (rows, columns) != (int(ds.Rows), int(ds.Columns)):
        raise DicomReadError(
            path,
            "pixel data does not match its header",
            f"{declared}, but (0028,0010) Rows is {ds.Rows} and (0028,0011) Columns is {ds.Columns}",
        )


def _j2k_size(data: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, precision) from a JPEG 2000 SIZ segment, or None if not found."""
    start = data.find(b"\xff\x4f\xff\x51")  # SOC then SIZ; a JP2 wrapper puts boxes before them
    if start < 0 or len(data) < start + 43:
        return None
    o = start + 4
    width, height, x_offset, y_offset = (int.from_bytes(data[o + i : o + i + 4], "big") for i in (4, 8, 12, 16))
    components = int.from_bytes(data[o + 36 : o + 38], "big")
    precision = (data[o + 38] & 0x7F) + 1
    return max(height - y_offset, 0), max(width - x_offset, 0), components, precision


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def _jpeg_size(data: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, precision) from a JPEG or JPEG-LS SOF segment, or None."""
    if not data.startswith(b"\xff\xd8"):
        return None
    o = 2
    while o + 4 <= len(data):
        if data[o] != 0xFF:
            return None
        marker = data[o + 1]
        if marker == 0xFF:  # fill byte
            o += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a segment
            o += 2
            continue
        length = int.from_bytes(data[o + 2 : o + 4], "big")
        if marker in _SOF_MARKERS:
            if o + 10 > len(data):
                return None
            precision = data[o + 4]
            rows = int.from_bytes(data[o + 5 : o + 7], "big")  # 0: defined later by a DNL segment
            columns = int.from_bytes(data[o + 7 : o + 9], "big")
            return rows, columns, data[o + 9], precision
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        o += 2 + length
    return None


# --- pixels to [0, 1] ----------------------------------------------------------------------


def _to_unit_range(path: Path, ds: Dataset, stored: np.ndarray, photometric: str) -> np.ndarray:
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
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32)


def _to_rgb(path: Path, ds: Dataset, stored: np.ndarray, photometric: str, bits: int) -> np.ndarray:
    """(rows, columns, 3) RGB in [0, 1]: scaled by the stored bit range, PALETTE COLOR through its LUT."""
    if photometric == "PALETTE COLOR":
        _require_palette(path, ds)
        try:
            rgb = apply_color_lut(stored[..., 0], ds)[..., :3]  # a fourth channel would be alpha
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except Exception as exc:
            raise DicomReadError(path, "invalid palette", f"(0028,1101-1203) Palette Color LUT: {_short(exc)}") from exc
    else:
        rgb = stored
    if not 1 <= bits <= 32:
        raise DicomReadError(path, "invalid image attributes", f"(0028,0101) Bits Stored is {bits}")
    return np.clip(rgb.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)


_PALETTE_TAGS = (
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
)
_PALETTE_DATA = (
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
)
_SEGMENTED_DATA = tuple("Segmented" + name for name in _PALETTE_DATA)


def _require_palette(path: Path, ds: Dataset) -> None:
    """A PALETTE COLOR image needs its lookup table (PS3.3 C.7.6.3.1.5-6, C.7.9)."""
    has_descriptors = all(k in ds for k in _PALETTE_TAGS)
    has_data = all(k in ds for k in _PALETTE_DATA) or all(k in ds for k in _SEGMENTED_DATA)
    if not (has_descriptors and has_data):
        raise DicomReadError(
            path,
            "palette colour image without its palette",
            "(0028,0004) is PALETTE COLOR but the (0028,1101-1103) Palette Color Lookup Table Descriptors and "
            "(0028,1201-1203) Data (or (0028,1221-1223) Segmented Data) are not all present; re-export the "
            "image from its source with the palette, or as RGB",
        )


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize each channel of (channels, rows, columns): area averaging when shrinking (no
    aliasing), bilinear when enlarging.

    Non-square images are stretched, not padded: padding would add a border the model
    could learn per site.
    """
    if image.shape[1:] == (size, size):
        return np.ascontiguousarray(image, dtype=np.float32)
    shrinking = image.shape[1] >= size and image.shape[2] >= size
    resize = (
        Resize(spatial_size=(size, size), mode="area")
        if shrinking
        else Resize(spatial_size=(size, size), mode="bilinear", align_corners=False)
    )
    out = resize(torch.from_numpy(np.ascontiguousarray(image)))
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return np.clip(out.numpy(), 0.0, 1.0).astype(np.float32)


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


def _explained(error: BaseException | str, diagnostics: Diagnostics) -> str:
    """An error's words, followed by what pydicom said meanwhile when that adds anything."""
    text = error if isinstance(error, str) else _short(error)
    said = diagnostics.summary(besides=text)
    if said:
        text += f" [logged: {said}]"
    return text


def _plugin_said(name: str, error: BaseException) -> str:
    """A plugin's own words, without pydicom's "Unable to decode ... plugins: NAME:" wrapping."""
    text = " ".join(str(error).split())
    text = text.removeprefix("Unable to decode as exceptions were raised by all available plugins:").strip()
    return _short(ValueError(text.removeprefix(f"{name}:").strip() or type(error).__name__))


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 28 else f"{n / (1 << 20):.1f} MiB"

"""Every transfer syntax decodes with fedmed's default plugins, and absurd sizes are refused
before decoding (fedmed.data.dicom, issue 13)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from fedmed.data.dicom import MAX_SIDE, DicomReadError, decode_pixels, read_dataset, read_dicom_image

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
RNG = np.random.default_rng(13)
# A smooth ramp plus noise: compresses like an image, and every stored value matters.
MONO16 = (np.add.outer(np.arange(64), np.arange(48)) * 36 + RNG.integers(0, 60, (64, 48))).astype(np.uint16)  # 12 bits
MONO8 = (MONO16 >> 4).astype(np.uint8)


def make_dataset(arr: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "OT"
    ds.set_pixel_data(arr, photometric, bits or arr.dtype.itemsize * 8, generate_instance_uid=False)
    return ds


def unit(arr: np.ndarray) -> np.ndarray:
    """What read_dicom_image makes of stored values without a window: min to max onto [0, 1]."""
    arr = arr.astype(np.float64)
    return (arr - arr.min()) / (arr.max() - arr.min())


def stored_of(path: Path) -> np.ndarray:
    return decode_pixels(path, read_dataset(path, stop_before_pixels=False), frame=0)


def write_reference(tmp_path: Path, arr: np.ndarray) -> Path:
    """The same pixels uncompressed, to compare a compressed file's reading with."""
    make_dataset(arr).save_as(tmp_path / "reference.dcm", enforce_file_format=True)
    return tmp_path / "reference.dcm"


def pillow_jpeg(arr: np.ndarray, **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG", **options)
    return out.getvalue()


def write_jpeg_baseline(path: Path, arr: np.ndarray, photometric: str, **options: object) -> Path:
    """A JPEG Baseline file as a modality writes one: Pillow's codestream, encapsulated."""
    ds = make_dataset(arr, photometric="RGB" if arr.ndim == 3 else "MONOCHROME2")
    ds.PixelData = encapsulate([pillow_jpeg(arr, **options)])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = photometric
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    return path


class TestEverySyntaxDecodes:
    @pytest.mark.parametrize(
        ("syntax", "kwargs"),
        [
            (RLELossless, {}),
            (JPEGLSLossless, {}),
            (JPEG2000Lossless, {}),
        ],
        ids=lambda v: getattr(v, "name", ""),
    )
    @pytest.mark.parametrize("arr", [MONO8, MONO16], ids=["8-bit", "16-bit"])
    def test_lossless_is_exact(self, tmp_path: Path, syntax: str, kwargs: dict, arr: np.ndarray) -> None:
        ds = make_dataset(arr)
        ds.compress(syntax, **kwargs)
        ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
        np.testing.assert_array_equal(stored_of(tmp_path / "c.dcm")[..., 0], arr)
        image = read_dicom_image(tmp_path / "c.dcm", size=16)
        assert image.dtype == np.float32 and image.shape == (1, 16, 16)
        np.testing.assert_array_equal(image, read_dicom_image(write_reference(tmp_path, arr), size=16))

    @pytest.mark.parametrize(
        ("syntax", "kwargs", "tolerance"),
        [
            (JPEGLSNearLossless, {"jls_error": 3}, 3),
            (JPEG2000, {"j2k_cr": [20]}, 100),
        ],
        ids=["JPEG-LS near-lossless", "JPEG 2000 lossy"],
    )
    def test_lossy_is_close(self, tmp_path: Path, syntax: str, kwargs: dict, tolerance: int) -> None:
        ds = make_dataset(MONO16)
        ds.compress(syntax, **kwargs)
        ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
        stored = stored_of(tmp_path / "c.dcm")[..., 0].astype(np.int64)
        assert np.abs(stored - MONO16).max() <= tolerance
        if syntax == JPEG2000:
            assert not np.array_equal(stored, MONO16)  # lossy indeed: the tolerance is needed

    @pytest.mark.parametrize(
        "syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian],
        ids=lambda u: u.name,
    )
    def test_uncompressed_and_deflated_are_exact(self, tmp_path: Path, syntax: str) -> None:
        ds = make_dataset(MONO16)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(tmp_path / "u.dcm", enforce_file_format=True)
        assert pydicom.dcmread(tmp_path / "u.dcm").file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(stored_of(tmp_path / "u.dcm")[..., 0], MONO16)
        square = MONO16[:20, :20]  # no resizing: the pipeline's min-max scaling alone
        ds = make_dataset(square)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(tmp_path / "s.dcm", enforce_file_format=True)
        np.testing.assert_allclose(read_dicom_image(tmp_path / "s.dcm", size=20)[0], unit(square), atol=1e-6)

    def test_big_endian_is_exact(self, tmp_path: Path) -> None:
        ds = make_dataset(MONO16)
        ds.PixelData = MONO16.astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        ds.save_as(tmp_path / "be.dcm", enforce_file_format=True)
        np.testing.assert_array_equal(stored_of(tmp_path / "be.dcm")[..., 0], MONO16)

    def test_shipped_syntaxes_of_one_image_agree(self) -> None:
        reference = read_dicom_image(TEST_FILES / "MR_small.dcm", size=64)
        for name in (
            "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
            "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
        ):
            np.testing.assert_array_equal(read_dicom_image(TEST_FILES / name, size=64), reference, err_msg=name)

    def test_jpeg_baseline_8_bit(self, tmp_path: Path) -> None:
        path = write_jpeg_baseline(tmp_path / "j.dcm", MONO8, "MONOCHROME2", quality=95)
        stored = stored_of(path)[..., 0].astype(np.int64)
        assert np.abs(stored - MONO8).mean() < 2 and np.abs(stored - MONO8).max() <= 12

    def test_jpeg_lossless_sv1(self) -> None:
        path = TEST_FILES / "SC_rgb_jpeg_gdcm.dcm"
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEGLosslessSV1
        np.testing.assert_array_equal(stored_of(path), stored_of(TEST_FILES / "SC_rgb_rle.dcm"))

    def test_jpeg_extended_12_bit_decodes_without_the_gpl_plugin(self, tmp_path: Path) -> None:
        """libjpeg-turbo's 12-bit codestream, encapsulated as a modality writes it, through fedmed's plugin."""
        import imagecodecs

        ds = make_dataset(MONO16)
        ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(MONO16, level=95, bitspersample=12)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
        ds.LossyImageCompression = "01"
        ds.save_as(tmp_path / "j12.dcm", enforce_file_format=True)
        assert "pylibjpeg" not in get_decoder(JPEGExtended12Bit).available_plugins  # no GPL code here
        stored = stored_of(tmp_path / "j12.dcm")[..., 0].astype(np.int64)
        assert np.abs(stored - MONO16).max() <= 24 and np.abs(stored - MONO16).mean() < 4
        shipped = stored_of(TEST_FILES / "JPGExtended.dcm")  # pydicom's 12-bit file, 1024 x 256
        assert shipped.shape == (1024, 256, 1) and shipped.dtype == np.uint16 and 0 < shipped.max() < 4096

    def test_jpeg_extended_12_bit_names_the_missing_decoder(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from fedmed.data import dicom

        order = dicom._plugin_order
        monkeypatch.setattr(dicom, "_plugin_order", lambda *a: [p for p in order(*a) if p != "imagecodecs"])
        with pytest.raises(DicomReadError, match=r"JPEG Extended.*Bits Stored is 12.*install imagecodecs"):
            read_dicom_image(TEST_FILES / "JPGExtended.dcm", size=16)

    @pytest.mark.parametrize("syntax", [HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL], ids=lambda u: u.name)
    def test_htj2k_has_a_decoder(self, syntax: str) -> None:
        # pydicom cannot write HTJ2K and none ships here: decoding is pylibjpeg-openjpeg's.
        assert "pylibjpeg" in get_decoder(syntax).available_plugins

    def test_jpeg_2000_prefers_openjpeg_and_tries_pillow_last(self) -> None:
        from fedmed.data.dicom import _plugin_order

        order = _plugin_order(JPEG2000, get_decoder(JPEG2000).available_plugins)
        assert order[0] == "pylibjpeg" and order[-1] == "pillow"

    def test_when_every_plugin_fails_the_reason_is_one_clean_line(self, tmp_path: Path, capfd) -> None:
        ds = make_dataset(MONO16)
        ds.compress(JPEG2000Lossless)
        codestream = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
        codestream[60:] = bytes(len(codestream) - 60)  # a valid SIZ, then zeros where tiles belong
        ds.PixelData = encapsulate([bytes(codestream)])
        ds.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
        with pytest.raises(DicomReadError) as caught:
            read_dicom_image(tmp_path / "broken.dcm", size=8)
        assert caught.value.reason == "pixel data cannot be decoded"
        assert "pylibjpeg:" in caught.value.detail and "gdcm:" in caught.value.detail
        assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)
        assert capfd.readouterr().err == ""


class TestSizesRefusedBeforeDecoding:
    def header(self, tmp_path: Path, **tags: object) -> Path:
        ds = make_dataset(np.zeros((4, 4), np.uint16))
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.save_as(tmp_path / "h.dcm", enforce_file_format=True)
        return tmp_path / "h.dcm"

    def test_60000_square_with_tiny_pixel_data(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = self.header(tmp_path, Rows=60000, Columns=60000)
        decoder = get_decoder(ExplicitVRLittleEndian)
        monkeypatch.setattr(type(decoder), "as_array", lambda *a, **k: pytest.fail("decoding was attempted"))
        start = time.perf_counter()
        with pytest.raises(
            DicomReadError, match=rf"image too large.*Rows 60000 x \(0028,0011\) Columns 60000.*{MAX_SIDE}"
        ):
            read_dicom_image(path, size=8)
        assert time.perf_counter() - start < 1.0

    def test_frame_over_one_gib(self, tmp_path: Path) -> None:
        path = self.header(tmp_path, Rows=30000, Columns=30000, SamplesPerPixel=3, PhotometricInterpretation="RGB",
                           BitsAllocated=8, BitsStored=8, HighBit=7, PlanarConfiguration=0)
        with pytest.raises(
            DicomReadError, match=r"image too large.*Samples 3 x \(0028,0100\) 8 bits = 2.51 GiB a frame"
        ):
            read_dicom_image(path, size=8)

    def test_all_frames_over_four_gib_but_one_frame_is_fine(self, tmp_path: Path) -> None:
        path = self.header(tmp_path, Rows=16384, Columns=16384, NumberOfFrames=9)
        ds = read_dataset(path, stop_before_pixels=False)
        with pytest.raises(DicomReadError, match=r"image too large.*Number of Frames 9 .*4.50 GiB.*frame by frame"):
            decode_pixels(path, ds)
        with pytest.raises(DicomReadError, match="pixel data is truncated"):  # the tiny data, its own reason
            decode_pixels(path, ds, frame=4)

    @pytest.mark.parametrize(("rows", "columns"), [(0, 4), (4, 0)])
    def test_zero_rows_or_columns(self, tmp_path: Path, rows: int, columns: int) -> None:
        path = self.header(tmp_path, Rows=rows, Columns=columns)
        with pytest.raises(
            DicomReadError, match=rf"invalid image size.*Rows is {rows} and \(0028,0011\) Columns is {columns}"
        ):
            read_dicom_image(path, size=8)

    def test_jpeg_2000_codestream_declaring_huge_dimensions(self, tmp_path: Path, capfd) -> None:
        ds = make_dataset(MONO16)
        ds.compress(JPEG2000Lossless)
        codestream = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
        assert codestream[:4] == b"\xff\x4f\xff\x51"
        codestream[8:16] = (50000).to_bytes(4, "big") * 2  # SIZ Xsiz, Ysiz (ISO/IEC 15444-1 A.5.1)
        ds.PixelData = encapsulate([bytes(codestream)])
        ds.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
        with pytest.raises(DicomReadError, match=r"image too large.*JPEG 2000 codestream .* declares 50000 x 50000"):
            read_dicom_image(tmp_path / "bomb.dcm", size=8)
        assert capfd.readouterr().err == ""

    def test_jpeg_codestream_disagreeing_with_header(self, tmp_path: Path) -> None:
        jpeg = bytearray(pillow_jpeg(MONO8, quality=90))
        sof = jpeg.index(b"\xff\xc0")
        jpeg[sof + 5 : sof + 9] = (40).to_bytes(2, "big") + (20).to_bytes(2, "big")  # height 40, width 20
        ds = make_dataset(MONO8)
        ds.PixelData = encapsulate([bytes(jpeg)])
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(tmp_path / "j.dcm", enforce_file_format=True)
        with pytest.raises(DicomReadError, match=r"does not match its header.*declares 20 x 40.*Rows is 64"):
            read_dicom_image(tmp_path / "j.dcm", size=8)

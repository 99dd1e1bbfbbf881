"""Colour DICOM images become RGB or their BT.601 luminance (fedmed.data.dicom, issue 13)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from fedmed.data.dicom import DicomReadError, decode_pixels, read_dataset, read_dicom_image

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# Black, white, red, green, blue, grey, in 2x2 blocks so that nothing bleeds at size 12.
SWATCHES = np.array(
    [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]], dtype=np.uint8
)
RGB = np.repeat(np.repeat(SWATCHES.reshape(2, 3, 3), 6, axis=0), 4, axis=1)  # 12 x 12 x 3
LUMA = np.array([0.299, 0.587, 0.114])


def make_dataset(arr: np.ndarray, photometric: str, bits: int = 8) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "OT"
    ds.set_pixel_data(arr, photometric, bits, generate_instance_uid=False)
    return ds


def write(tmp_path: Path, ds: Dataset, name: str = "c.dcm") -> Path:
    ds.save_as(tmp_path / name, enforce_file_format=True)
    return tmp_path / name


class TestRgb:
    def test_rgb_channels_are_the_colours_over_255(self, tmp_path: Path) -> None:
        image = read_dicom_image(write(tmp_path, make_dataset(RGB, "RGB")), size=12, channels=3)
        assert image.shape == (3, 12, 12) and image.dtype == np.float32
        np.testing.assert_allclose(np.moveaxis(image, 0, -1), RGB / 255.0, atol=1e-6)

    def test_one_channel_is_bt601_luminance(self, tmp_path: Path) -> None:
        image = read_dicom_image(write(tmp_path, make_dataset(RGB, "RGB")), size=12, channels=1)
        np.testing.assert_allclose(image[0], (RGB / 255.0) @ LUMA, atol=1e-6)
        assert image[0, 0, 0] == 0.0 and image[0, 0, 4] == pytest.approx(1.0)
        assert image[0, 0, 8] == pytest.approx(0.299) and image[0, 6, 0] == pytest.approx(0.587)

    def test_colour_is_scaled_by_bit_range_not_min_max(self, tmp_path: Path) -> None:
        dim = (RGB // 4).astype(np.uint8)  # a dark picture stays dark
        image = read_dicom_image(write(tmp_path, make_dataset(dim, "RGB")), size=12, channels=3)
        assert image.max() == pytest.approx(63 / 255)

    def test_16_bit_rgb_matches_8_bit(self) -> None:
        eight = read_dicom_image(TEST_FILES / "SC_rgb_rle.dcm", size=32, channels=3)
        sixteen = read_dicom_image(TEST_FILES / "SC_rgb_rle_16bit.dcm", size=32, channels=3)
        np.testing.assert_allclose(sixteen, eight, atol=1e-5)

    def test_decode_pixels_gives_three_samples(self, tmp_path: Path) -> None:
        path = write(tmp_path, make_dataset(RGB, "RGB"))
        ds = read_dataset(path, stop_before_pixels=False)
        np.testing.assert_array_equal(decode_pixels(path, ds, frame=0), RGB)
        assert decode_pixels(path, ds).shape == (1, 12, 12, 3)


class TestYbr:
    def test_ybr_full_is_converted_once(self, tmp_path: Path) -> None:
        ybr = convert_color_space(RGB, "RGB", "YBR_FULL")
        image = read_dicom_image(write(tmp_path, make_dataset(ybr, "YBR_FULL")), size=12, channels=3)
        # converted twice, red would come out far from red
        np.testing.assert_allclose(np.moveaxis(image, 0, -1), RGB / 255.0, atol=2.5 / 255)

    def test_ybr_full_422_uncompressed(self) -> None:
        image = read_dicom_image(TEST_FILES / "SC_ybr_full_422_uncompressed.dcm", size=100, channels=3)
        reference = read_dicom_image(TEST_FILES / "SC_rgb_rle.dcm", size=100, channels=3)
        assert np.abs(image - reference).max() <= 7 / 255

    def test_jpeg_ybr_full_422_written_by_pillow(self, tmp_path: Path) -> None:
        out = io.BytesIO()
        big = np.repeat(np.repeat(RGB, 4, axis=0), 4, axis=1)  # 48 x 48: blocks larger than JPEG's 8x8
        Image.fromarray(big).save(out, format="JPEG", quality=95, subsampling="4:2:2")
        ds = make_dataset(big, "RGB")
        ds.PixelData = encapsulate([out.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        image = read_dicom_image(write(tmp_path, ds), size=48, channels=3)
        pillows_own = np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB")) / 255.0
        np.testing.assert_allclose(np.moveaxis(image, 0, -1), pillows_own, atol=3 / 255)
        assert np.abs(np.moveaxis(image, 0, -1) - big / 255.0).mean() < 0.02

    @pytest.mark.parametrize(
        "name", ["examples_ybr_color.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm"]
    )
    def test_shipped_jpeg_ybr_reads_as_rgb(self, name: str) -> None:
        image = read_dicom_image(TEST_FILES / name, size=32, channels=3)
        assert image.shape == (3, 32, 32) and image.min() >= 0.0 and image.max() <= 1.0
        # pydicom's pixel_array converts YBR to RGB once; fedmed must not convert again
        ds = read_dataset(TEST_FILES / name, stop_before_pixels=False)
        reference = pydicom.dcmread(TEST_FILES / name).pixel_array
        np.testing.assert_array_equal(
            decode_pixels(TEST_FILES / name, ds), reference.reshape(-1, *reference.shape[-3:])
        )

    def test_shipped_jpeg_ybr_matches_its_rgb_original(self) -> None:
        image = read_dicom_image(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm", size=100, channels=3)
        reference = read_dicom_image(TEST_FILES / "SC_rgb_rle.dcm", size=100, channels=3)
        assert np.abs(image - reference).max() <= 7 / 255

    def test_jpeg_2000_ybr_rct(self) -> None:
        assert pydicom.dcmread(TEST_FILES / "GDCMJ2K_TextGBR.dcm").PhotometricInterpretation == "YBR_RCT"
        image = read_dicom_image(TEST_FILES / "GDCMJ2K_TextGBR.dcm", size=64, channels=3)
        assert image.shape == (3, 64, 64) and image.max() > 0.5


class TestPalette:
    def palette_dataset(self, *, with_lut: bool = True) -> Dataset:
        indices = np.tile(np.arange(4, dtype=np.uint8), (4, 1))  # columns 0..3
        ds = make_dataset(indices, "PALETTE COLOR")
        if with_lut:
            lut = np.zeros((3, 256), dtype=np.uint16)
            lut[:, :4] = np.array([[0, 65535, 0, 0], [0, 0, 65535, 0], [0, 0, 0, 65535]])
            for colour, values in zip(("Red", "Green", "Blue"), lut, strict=True):
                setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
                setattr(ds, f"{colour}PaletteColorLookupTableData", values.tobytes())
        return ds

    def test_palette_goes_through_its_lut(self, tmp_path: Path) -> None:
        image = read_dicom_image(write(tmp_path, self.palette_dataset()), size=4, channels=3)
        np.testing.assert_allclose(image[:, 0, :], [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], atol=1e-6)
        grey = read_dicom_image(tmp_path / "c.dcm", size=4, channels=1)
        np.testing.assert_allclose(grey[0, 0], [0, 0.299, 0.587, 0.114], atol=1e-6)

    def test_palette_without_lut_is_refused_naming_tags(self, tmp_path: Path) -> None:
        path = write(tmp_path, self.palette_dataset(with_lut=False))
        with pytest.raises(
            DicomReadError, match=r"without its palette.*\(0028,1101-1103\).*\(0028,1201-1203\).*re-export"
        ):
            read_dicom_image(path, size=4)

    def test_shipped_palette_example(self) -> None:
        image = read_dicom_image(TEST_FILES / "examples_palette.dcm", size=64, channels=3)
        assert image.shape == (3, 64, 64) and np.abs(image[0] - image[2]).mean() > 0.01
        luminance = read_dicom_image(TEST_FILES / "examples_palette.dcm", size=64, channels=1)
        np.testing.assert_allclose(luminance[0], np.tensordot(LUMA, image, axes=1), atol=1e-5)


def test_grayscale_as_rgb_repeats_its_channel() -> None:
    image = read_dicom_image(TEST_FILES / "CT_small.dcm", size=32, channels=3)
    np.testing.assert_array_equal(image[0], image[1])
    np.testing.assert_array_equal(image[0], read_dicom_image(TEST_FILES / "CT_small.dcm", size=32)[0])

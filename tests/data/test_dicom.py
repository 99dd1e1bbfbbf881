"""Tests for fedmed.data.dicom: pixel pipeline, defects, and bias-relevant tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from fedmed.data.dicom import (
    DicomMetadata,
    DicomReadError,
    read_dicom_image,
    read_dicom_metadata,
)
from fedmed.errors import DataError


def read_gray(path: Path, *, size: int) -> np.ndarray:
    """The one channel of a grayscale read."""
    return read_dicom_image(path, size=size)[0]


RAMP = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 16  # 0..4080, 12 bits


def make_dataset(
    arr: np.ndarray = RAMP,
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    **tags: object,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["fedmed-test", repr(sorted(tags.items()))])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits, generate_instance_uid=False)
    with pydicom_config.disable_value_validation():  # some tests need invalid values
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
    return ds


def write_dicom(path: Path, arr: np.ndarray = RAMP, **kwargs: object) -> Path:
    ds = make_dataset(arr, **kwargs)
    with pydicom_config.disable_value_validation():
        ds.save_as(path, enforce_file_format=True)
    return path


class TestReadDicomImage:
    def test_rescale_then_window_maps_to_unit_range(self, tmp_path: Path) -> None:
        path = write_dicom(
            tmp_path / "w.dcm", RescaleSlope=2, RescaleIntercept=-1000,
            WindowCenter=1000, WindowWidth=2000,
        )
        image = read_gray(path, size=16)
        values = RAMP.astype(np.float64) * 2 - 1000  # modality values
        expected = np.clip((values - 0.0) / 2000.0, 0.0, 1.0)  # window 0..2000
        assert image.dtype == np.float32 and image.shape == (16, 16)
        assert image.min() == 0.0 and image.max() == 1.0
        np.testing.assert_allclose(image, expected, atol=2e-3)

    def test_without_window_scales_min_to_max(self, tmp_path: Path) -> None:
        arr = (RAMP // 2 + 300).astype(np.uint16)
        image = read_gray(write_dicom(tmp_path / "m.dcm", arr), size=16)
        expected = (arr - arr.min()) / (arr.max() - arr.min())
        np.testing.assert_allclose(image, expected, atol=1e-6)

    def test_first_of_several_windows_is_used(self, tmp_path: Path) -> None:
        path = write_dicom(
            tmp_path / "multi.dcm", WindowCenter=[1024, 3000], WindowWidth=[2048, 500]
        )
        image = read_gray(path, size=16)
        expected = np.clip(RAMP / 2048.0, 0.0, 1.0)
        np.testing.assert_allclose(image, expected, atol=2e-3)

    def test_monochrome1_is_inverted(self, tmp_path: Path) -> None:
        normal = read_gray(write_dicom(tmp_path / "m2.dcm", RAMP), size=16)
        inverted = read_gray(
            write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1"), size=16
        )
        np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)
        assert normal[0, 0] == 0.0 and inverted[0, 0] == 1.0

    @pytest.mark.parametrize("shape, size", [((40, 30), 16), ((16, 16), 48), ((20, 24), 20)])
    def test_resizes_to_square(self, tmp_path: Path, shape: tuple[int, int], size: int) -> None:
        arr = np.random.default_rng(0).integers(0, 4096, shape, dtype=np.uint16)
        image = read_gray(write_dicom(tmp_path / "r.dcm", arr), size=size)
        assert image.shape == (size, size) and image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 1.0

    def test_multi_frame_gives_middle_frame(self, tmp_path: Path) -> None:
        frames = np.stack([np.full((8, 8), 100, np.uint16) for _ in range(3)])
        frames[1, :4] = 4000  # only the middle frame has a bright top half
        path = write_dicom(tmp_path / "mf.dcm", frames)
        assert dcmread(path).NumberOfFrames == 3
        image = read_gray(path, size=8)
        assert image[:4].min() == 1.0 and image[4:].max() == 0.0

    def test_rle_compressed_decodes_with_numpy_alone(self, tmp_path: Path) -> None:
        ds = make_dataset(RAMP)
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
        image = read_gray(tmp_path / "rle.dcm", size=16)
        reference = read_gray(write_dicom(tmp_path / "raw.dcm", RAMP), size=16)
        np.testing.assert_array_equal(image, reference)

    def test_file_without_preamble_is_read(self, tmp_path: Path) -> None:
        ds = make_dataset(RAMP)
        del ds.file_meta
        path = tmp_path / "bare.dcm"
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert path.read_bytes()[128:132] != b"DICM"
        image = read_gray(path, size=16)
        assert image.shape == (16, 16) and image.max() == 1.0


class TestReadDicomImageErrors:
    def test_truncated_pixel_data(self, tmp_path: Path) -> None:
        path = write_dicom(tmp_path / "t.dcm")
        path.write_bytes(path.read_bytes()[:-200])
        with pytest.raises(DicomReadError, match="t.dcm: pixel data is truncated"):
            read_gray(path, size=16)

    def test_no_pixel_data(self, tmp_path: Path) -> None:
        ds = make_dataset()
        del ds.PixelData
        ds.save_as(tmp_path / "np.dcm", enforce_file_format=True)
        with pytest.raises(DicomReadError, match="no pixel data"):
            read_gray(tmp_path / "np.dcm", size=16)

    @pytest.mark.parametrize(
        "content", [b"hello, this is a text file\n" * 20, bytes(range(256)) * 8, b""]
    )
    def test_not_dicom(self, tmp_path: Path, content: bytes) -> None:
        path = tmp_path / "notes.txt"
        path.write_bytes(content)
        with pytest.raises(DicomReadError, match="notes.txt: not a DICOM file"):
            read_gray(path, size=16)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(DicomReadError, match="file not found"):
            read_gray(tmp_path / "absent.dcm", size=16)

    def test_compressed_without_decoder_names_syntax_and_packages(self, monkeypatch: pytest.MonkeyPatch) -> None:
        path = get_testdata_file("MR_small_jp2klossless.dcm")
        if path is None:
            pytest.skip("pydicom's bundled JPEG 2000 test file is not available offline")
        # fedmed installs the decoders (pyproject.toml): a site without them is simulated
        decoder = get_decoder(dcmread(path).file_meta.TransferSyntaxUID)
        monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
        missing = ["pylibjpeg - requires pylibjpeg and pylibjpeg-openjpeg", "gdcm - requires gdcm"]
        monkeypatch.setattr(type(decoder), "missing_dependencies", property(lambda self: missing))
        message = r"no decoder for transfer syntax JPEG 2000.*install one of: .*pylibjpeg"
        with pytest.raises(DicomReadError, match=message):
            read_gray(Path(path), size=16)

    def test_colour_space_pydicom_does_not_convert_is_refused(self, tmp_path: Path) -> None:
        # Colour is read since issue 13 (tests/data/test_colour.py); a colour space that
        # pydicom's decoding leaves unconverted is still refused, naming the tag.
        rgb = np.zeros((8, 8, 3), dtype=np.uint8)
        ds = make_dataset(np.zeros((8, 8), np.uint16))
        ds.set_pixel_data(rgb, "RGB", 8, generate_instance_uid=False)
        ds.PhotometricInterpretation = "YBR_PARTIAL_420"
        ds.save_as(tmp_path / "ybr420.dcm", enforce_file_format=True)
        with pytest.raises(DicomReadError, match=r"colour space not supported.*\(0028,0004\).*YBR_PARTIAL_420"):
            read_gray(tmp_path / "ybr420.dcm", size=8)

    def test_blank_image(self, tmp_path: Path) -> None:
        path = write_dicom(tmp_path / "blank.dcm", np.full((8, 8), 7, np.uint16))
        with pytest.raises(DicomReadError, match="blank image"):
            read_gray(path, size=8)

    def test_invalid_window_width(self, tmp_path: Path) -> None:
        path = write_dicom(tmp_path / "ww.dcm", WindowCenter=100, WindowWidth=0)
        with pytest.raises(DicomReadError, match=r"invalid window.*\(0028,1051\)"):
            read_gray(path, size=16)

    def test_invalid_rescale_string_is_a_read_error(self, tmp_path: Path) -> None:
        # An archive defect: a DS value that only fails when the element is read.
        path = write_dicom(tmp_path / "ds.dcm", RescaleSlope="9.25", RescaleIntercept="0")
        path.write_bytes(path.read_bytes().replace(b"9.25", b"abc "))
        with pytest.raises(DicomReadError, match="ds.dcm: invalid image attributes"):
            read_gray(path, size=16)

    def test_is_a_data_error(self) -> None:
        assert issubclass(DicomReadError, DataError)


class TestReadDicomMetadata:
    @pytest.mark.parametrize(
        "age, expected",
        [
            ("044Y", 44.0),
            ("006M", 0.5),
            ("010W", round(70 / 365.25, 4)),
            ("003D", round(3 / 365.25, 4)),
            ("", None),
            ("abc", None),
            ("44", None),
            ("999Y", None),
        ],
    )
    def test_patient_age(self, age: str, expected: float | None) -> None:
        assert read_dicom_metadata(make_dataset(PatientAge=age)).age_years == expected

    @pytest.mark.parametrize(
        "birth, study, expected",
        [
            ("19800615", "20240615", 44.0),
            ("19800616", "20240615", pytest.approx(43.997, abs=1e-3)),
            ("19800615", "20241215", pytest.approx(44.5, abs=0.01)),
            ("2024xx01", "20240615", None),
            ("20250101", "20240615", None),  # born after the study
            ("19800615", "", None),
        ],
    )
    def test_age_from_birth_and_study_dates(self, birth: str, study: str, expected: object) -> None:
        ds = make_dataset(PatientBirthDate=birth, StudyDate=study)
        assert read_dicom_metadata(ds).age_years == expected

    @pytest.mark.parametrize(
        "sex, expected", [("M", "M"), ("F", "F"), ("O", "O"), ("f", "F"), ("", None), ("X", None)]
    )
    def test_patient_sex(self, sex: str, expected: str | None) -> None:
        assert read_dicom_metadata(make_dataset(PatientSex=sex)).sex == expected

    def test_reads_tags_from_a_path(self, tmp_path: Path) -> None:
        path = write_dicom(
            tmp_path / "m.dcm", PatientSex="F", PatientAge="061Y", Manufacturer="Acme Imaging",
            ManufacturerModelName="AX-100", BodyPartExamined="CHEST",
        )
        assert read_dicom_metadata(path) == DicomMetadata(
            sex="F", age_years=61.0, manufacturer="Acme Imaging", model="AX-100",
            modality="DX", body_part="CHEST",
        )

    def test_missing_tags_are_none(self) -> None:
        metadata = read_dicom_metadata(make_dataset())
        assert metadata == DicomMetadata(modality="DX")

    def test_non_dicom_path_raises(self, tmp_path: Path) -> None:
        (tmp_path / "x.txt").write_text("not dicom")
        with pytest.raises(DicomReadError, match="not a DICOM file"):
            read_dicom_metadata(tmp_path / "x.txt")


def test_written_files_are_standard(tmp_path: Path) -> None:
    ds = dcmread(write_dicom(tmp_path / "s.dcm"))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.preamble is not None

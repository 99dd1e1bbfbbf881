"""Tests for fedmed.data.masks: SEG and NIfTI masks read onto their image's grid, every misfit refused."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fedmed.data.dicom import DicomReadError, read_dicom_image
from fedmed.data.masks import (
    MaskError,
    read_label_map_image,
    read_label_map_volume,
    read_mask_image,
    read_mask_volume,
    resize_label_map,
)
from fedmed.data.series import DicomSeries, group_series, read_volume
from fedmed.data.volume import preprocess_volume
from tests.data.seg_files import (
    box_labels,
    ct_series,
    image_dataset,
    save,
    segmentation,
    without_references,
    write_nifti_2d,
    write_nifti_3d,
)

BOX = (4, 10, 6, 15)
SeriesAndSeg = tuple[DicomSeries, np.ndarray, list[Dataset], Path]  # series, labels, datasets, SEG


@pytest.fixture
def dx(tmp_path: Path) -> tuple[Path, Path]:
    """A DX image (no frame of reference) and its BINARY SEG."""
    ds = image_dataset(box=BOX)
    image = save(ds, tmp_path / "image.dcm")
    mask = save(segmentation([ds], box_labels(20, 24, BOX)[None]), tmp_path / "mask.dcm")
    return image, mask


def bad_seg(tmp_path: Path, image_ds: Dataset, **changes: object) -> Path:
    """A SEG drawn on a copy of `image_ds` whose tags differ as `changes` says."""
    other = copy.deepcopy(image_ds)
    for keyword, value in changes.items():
        setattr(other, keyword, value)
    rows, columns = int(other.Rows), int(other.Columns)
    if (rows, columns) != (image_ds.Rows, image_ds.Columns):
        other.set_pixel_data(np.zeros((rows, columns), np.uint16), "MONOCHROME2", 12, generate_instance_uid=False)
    return save(segmentation([other], box_labels(rows, columns, (1, 3, 1, 3))[None]), tmp_path / "bad.dcm")


class TestSegImage:
    def test_round_trip_at_native_size(self, dx: tuple[Path, Path]) -> None:
        image, mask = dx
        labels = read_label_map_image(mask, image, structures=["lesion"])
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, box_labels(20, 24, BOX))

    @pytest.mark.parametrize("size", [8, 13, 20, 40])
    def test_mask_follows_the_image_when_resized(self, dx: tuple[Path, Path], size: int) -> None:
        image, mask = dx
        pixels = read_dicom_image(image, size=size)[0]
        labels = read_mask_image(mask, image, structures=["lesion"], size=size)
        assert labels.shape == (size, size)
        bright = pixels > 0.5  # the box is 3500 of 500..3500: above half wherever it covers most of a pixel
        assert (labels == 1).sum() > 0
        overlap = (bright & (labels == 1)).sum() / (bright | (labels == 1)).sum()
        assert overlap > 0.8
        centre_image = np.argwhere(bright).mean(axis=0)
        centre_mask = np.argwhere(labels == 1).mean(axis=0)
        np.testing.assert_allclose(centre_mask, centre_image, atol=0.51)

    def test_nearest_takes_the_pixel_under_each_centre(self) -> None:
        # output pixel j takes input floor((j + 0.5) * n_in / n_out); torch's legacy "nearest"
        # takes floor(j * n_in / n_out), half an input pixel off the image's area/bilinear grid
        labels = np.zeros((10, 10), np.uint8)
        labels[:, 9] = 1
        np.testing.assert_array_equal(resize_label_map(labels, 5)[0], [0, 0, 0, 0, 1])  # legacy: all 0
        three = np.array([[0, 1, 2]], np.uint8).repeat(3, 0)
        np.testing.assert_array_equal(resize_label_map(three, 4)[0], [0, 1, 1, 2])  # legacy: [0, 0, 1, 2]

    def test_ct_image_with_frame_of_reference(self, tmp_path: Path) -> None:
        ds = image_dataset(modality="CT", box=BOX)
        image = save(ds, tmp_path / "ct.dcm")
        mask = save(segmentation([ds], box_labels(20, 24, BOX)[None]), tmp_path / "seg.dcm")
        np.testing.assert_array_equal(read_label_map_image(mask, image, structures=["lesion"]),
                                      box_labels(20, 24, BOX))

    def test_labels_match_case_insensitively_and_stripped(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = save(segmentation([ds], box_labels(20, 24, BOX)[None], labels=[" Lesion "]), tmp_path / "m.dcm")
        assert read_label_map_image(mask, image, structures=["LESION"]).max() == 1

    def test_overlap_goes_to_the_later_structure(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        stacked = np.zeros((1, 20, 24, 2), np.uint8)
        stacked[0, 2:12, 2:12, 0] = 1  # liver
        stacked[0, 8:16, 8:16, 1] = 1  # tumour, overlapping it
        mask = save(segmentation([ds], stacked, labels=["liver", "tumour"]), tmp_path / "m.dcm")
        labels = read_label_map_image(mask, image, structures=["liver", "tumour"])
        assert labels[10, 10] == 2 and labels[3, 3] == 1 and labels[14, 14] == 2
        swapped = read_label_map_image(mask, image, structures=["tumour", "liver"])
        assert swapped[10, 10] == 2 and swapped[3, 3] == 2 and swapped[14, 14] == 1  # liver is now later

    def test_fractional_is_thresholded_at_one_half(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        probability = np.zeros((1, 20, 24, 1), np.float32)
        probability[0, 2:6, 2:6, 0] = 0.7
        probability[0, 10:14, 10:14, 0] = 0.3
        mask = save(segmentation([ds], probability, kind="FRACTIONAL"), tmp_path / "m.dcm")
        labels = read_label_map_image(mask, image, structures=["lesion"])
        assert labels[3, 3] == 1 and labels[11, 11] == 0 and labels.sum() == 16

    def test_labelmap_segmentation(self, tmp_path: Path) -> None:
        ds = image_dataset(modality="CT")
        image = save(ds, tmp_path / "image.dcm")
        label_map = box_labels(20, 24, BOX)
        label_map[12:16, 2:5] = 2
        mask = save(segmentation([ds], label_map[None], labels=["a", "b"], kind="LABELMAP"), tmp_path / "m.dcm")
        assert dcmread(mask).SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
        np.testing.assert_array_equal(read_label_map_image(mask, image, structures=["a", "b"]), label_map)

    def test_no_library_log_reaches_the_root_logger(self, dx: tuple[Path, Path], caplog: pytest.LogCaptureFixture
                                                   ) -> None:
        image, mask = dx
        caplog.set_level(logging.DEBUG)
        read_mask_image(mask, image, structures=["lesion"], size=16)
        assert not [r for r in caplog.records if r.name.split(".")[0] in ("highdicom", "pydicom", "nibabel")]


class TestSegRefused:
    def test_rows_differ(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = bad_seg(tmp_path, ds, Rows=22)
        with pytest.raises(MaskError, match=r"mask size differs from image .*Rows x .*Columns is 22 x 24.* 20 x 24"):
            read_mask_image(mask, image, structures=["lesion"], size=16)

    def test_pixel_spacing_differs(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = bad_seg(tmp_path, ds, PixelSpacing=[0.5, 0.61])
        with pytest.raises(MaskError, match=r"pixel spacing differs.*\(0028,0030\) Pixel Spacing is \[0.5, 0.61\]"):
            read_mask_image(mask, image, structures=["lesion"], size=16)

    def test_pixel_spacing_within_tolerance_is_accepted(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = bad_seg(tmp_path, ds, PixelSpacing=[0.50002, 0.6])
        assert read_label_map_image(mask, image, structures=["lesion"]).sum() == 4

    def test_frame_of_reference_differs(self, tmp_path: Path) -> None:
        ds = image_dataset(modality="CT")
        image = save(ds, tmp_path / "image.dcm")
        mask = bad_seg(tmp_path, ds, FrameOfReferenceUID=generate_uid())
        with pytest.raises(MaskError, match=r"frame of reference differs.*\(0020,0052\) Frame of Reference UID"):
            read_mask_image(mask, image, structures=["lesion"], size=16)

    def test_seg_of_another_series(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = bad_seg(tmp_path, ds, SeriesInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
        with pytest.raises(MaskError, match=r"mask of another series .*\(0008,1115\) Referenced Series Sequence"):
            read_mask_image(mask, image, structures=["lesion"], size=16)

    def test_seg_of_another_image_of_the_series(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = bad_seg(tmp_path, ds, SOPInstanceUID=generate_uid())
        with pytest.raises(MaskError, match=r"mask does not reference the image .*not the image's \(0008,0018\)"):
            read_mask_image(mask, image, structures=["lesion"], size=16)

    def test_undeclared_segment_label(self, dx: tuple[Path, Path]) -> None:
        image, mask = dx
        with pytest.raises(MaskError, match=r"undeclared structure in mask .*Segment Label 'lesion' is not among "
                                            r"the declared structures \[liver, tumour\]"):
            read_mask_image(mask, image, structures=["liver", "tumour"], size=16)

    def test_image_given_as_mask(self, dx: tuple[Path, Path]) -> None:
        image, _ = dx
        with pytest.raises(MaskError, match=r"not a segmentation .*SOP Class UID is Digital X-Ray"):
            read_mask_image(image, image, structures=["lesion"], size=16)

    def test_unreadable_and_missing(self, dx: tuple[Path, Path], tmp_path: Path) -> None:
        image, _ = dx
        garbage = tmp_path / "garbage.dcm"
        garbage.write_bytes(b"not dicom at all" * 10)
        with pytest.raises(MaskError, match="unreadable mask"):
            read_mask_image(garbage, image, structures=["lesion"], size=16)
        with pytest.raises(MaskError, match="mask not found"):
            read_mask_image(tmp_path / "absent.dcm", image, structures=["lesion"], size=16)

    def test_is_a_dicom_read_error_with_a_stable_reason(self, dx: tuple[Path, Path]) -> None:
        image, mask = dx
        with pytest.raises(DicomReadError) as caught:
            read_mask_image(mask, image, structures=["other"], size=16)
        assert caught.value.reason == "undeclared structure in mask"
        assert str(caught.value).startswith(f"Cannot use mask {mask}")

    def test_bad_structure_lists_are_the_callers_error(self, dx: tuple[Path, Path]) -> None:
        image, mask = dx
        for structures in ([], ["a", "A"], "lesion", [" "]):
            with pytest.raises(ValueError, match="structures"):
                read_mask_image(mask, image, structures=structures, size=16)


class TestNiftiImage:
    @pytest.mark.parametrize("layout", [{}, {"flip_rows": True}, {"row_major": True},
                                        {"flip_rows": True, "row_major": True}])
    @pytest.mark.parametrize("modality", ["DX", "CT"])
    def test_round_trip(self, tmp_path: Path, layout: dict[str, bool], modality: str) -> None:
        ds = image_dataset(modality=modality, box=BOX)
        image = save(ds, tmp_path / "image.dcm")
        labels = box_labels(20, 24, BOX)
        labels[0, 0] = 1  # a corner: a flip or transpose would move it
        mask = write_nifti_2d(tmp_path / "mask.nii.gz", labels, ds, **layout)
        np.testing.assert_array_equal(read_label_map_image(mask, image, structures=["lesion"]), labels)
        resized = read_mask_image(mask, image, structures=["lesion"], size=12)
        np.testing.assert_array_equal(resized, resize_label_map(labels, 12))

    def test_float_labels_that_are_integers(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = write_nifti_2d(tmp_path / "m.nii", box_labels(20, 24, BOX), ds, dtype=np.float32)
        assert read_label_map_image(mask, image, structures=["lesion"]).sum() == 54

    def test_values_out_of_range(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = write_nifti_2d(tmp_path / "m.nii.gz", box_labels(20, 24, BOX, value=3), ds)
        with pytest.raises(MaskError, match=r"outside the declared structures .*value\(s\) \[3\] but structures "
                                            r"declare 1..2 \(liver, tumour\)"):
            read_mask_image(mask, image, structures=["liver", "tumour"], size=16)

    def test_non_integer_values(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = write_nifti_2d(tmp_path / "m.nii.gz", box_labels(20, 24, BOX), ds, dtype=np.float32)
        image_data = nib.load(mask)
        nib.save(nib.Nifti1Image(image_data.get_fdata() * 0.5, image_data.affine), mask)
        with pytest.raises(MaskError, match="non-integer values"):
            read_mask_image(mask, image, structures=["lesion"], size=16)

    def test_wrong_shape(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = write_nifti_2d(tmp_path / "m.nii.gz", np.zeros((20, 22), np.uint8), ds)
        with pytest.raises(MaskError, match=r"mask size differs from image .*NIfTI shape \(22, 20, 1\).* \(1, 20, 22\)"
                                            r".* is \(1, 20, 24\)"):
            read_mask_image(mask, image, structures=["lesion"], size=16)

    def test_wrong_spacing(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = write_nifti_2d(tmp_path / "m.nii.gz", box_labels(20, 24, BOX), ds, spacing_scale=2.0)
        with pytest.raises(MaskError, match=r"pixel spacing differs.*spacing 1 mm .*the image's is 0.5 mm"):
            read_mask_image(mask, image, structures=["lesion"], size=16)

    def test_shifted_origin(self, tmp_path: Path) -> None:
        ds = image_dataset(modality="CT")
        image = save(ds, tmp_path / "image.dcm")
        mask = write_nifti_2d(tmp_path / "m.nii.gz", box_labels(20, 24, BOX), ds, shift_mm=3.0)
        with pytest.raises(MaskError, match=r"mask grid differs .*Image Position \(Patient\) is \[-10, -20, 30\]"):
            read_mask_image(mask, image, structures=["lesion"], size=16)

    def test_without_orientation(self, tmp_path: Path) -> None:
        ds = image_dataset()
        image = save(ds, tmp_path / "image.dcm")
        mask = tmp_path / "m.nii"
        nib.save(nib.Nifti1Image(box_labels(24, 20, BOX), None), mask)
        with pytest.raises(MaskError, match="NIfTI without orientation"):
            read_mask_image(mask, image, structures=["lesion"], size=16)


@pytest.fixture
def series_and_seg(tmp_path: Path) -> SeriesAndSeg:
    datasets, labels = ct_series(tmp_path / "series")
    mask = save(segmentation(datasets, labels), tmp_path / "seg.dcm")
    series = group_series(sorted((tmp_path / "series").glob("*.dcm"))).series[0]
    return series, labels, datasets, mask


class TestVolume:
    def test_seg_round_trip_in_position_order(self, series_and_seg: SeriesAndSeg) -> None:
        series, labels, _, mask = series_and_seg
        read = read_label_map_volume(mask, series, structures=["lesion"])
        np.testing.assert_array_equal(read, labels)
        voxels = read_volume(series).voxels  # bright where the labels are, slice index in the values
        assert voxels[read == 1].min() > voxels[read == 0].max()

    def test_resized_like_the_volume(self, series_and_seg: SeriesAndSeg) -> None:
        series, _, _, mask = series_and_seg
        for options in ({"target_shape": (3, 8, 8)}, {"target_shape": (10, 16, 14)},
                        {"target_spacing": (2.0, 1.0, 1.0), "target_shape": (8, 8, 8)}, {"target_spacing": (5, 2, 2)}):
            labels = read_mask_volume(mask, series, structures=["lesion"], **options)
            image = preprocess_volume(read_volume(series), window=(500 - 1024 + 1500, 3000), **options)[0]
            assert labels.shape == image.shape and labels.any()
            bright = image > 0.5
            overlap = (bright & (labels == 1)).sum() / (bright | (labels == 1)).sum()
            assert overlap > 0.6, options

    def test_seg_matched_by_position_without_references(self, series_and_seg: SeriesAndSeg, tmp_path: Path) -> None:
        series, labels, datasets, _ = series_and_seg
        mask = save(without_references(segmentation(datasets, labels)), tmp_path / "byposition.dcm")
        np.testing.assert_array_equal(read_label_map_volume(mask, series, structures=["lesion"]), labels)

    def test_frame_off_the_slices_is_refused(self, series_and_seg: SeriesAndSeg, tmp_path: Path) -> None:
        series, labels, datasets, _ = series_and_seg
        seg = without_references(segmentation(datasets, labels))
        position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        position.ImagePositionPatient = [float(v) for v in position.ImagePositionPatient[:2]] + [
            float(position.ImagePositionPatient[2]) + 1.0
        ]
        mask = save(seg, tmp_path / "shifted.dcm")
        with pytest.raises(MaskError, match=r"mask grid differs .*SEG frame 1 lies at .* on no slice"):
            read_label_map_volume(mask, series, structures=["lesion"])

    def test_seg_referencing_a_lost_slice(self, series_and_seg: SeriesAndSeg) -> None:
        series, _, _, mask = series_and_seg
        remaining = [Path(p) for p in series.files[1:]]
        fewer = group_series(remaining).series[0]
        with pytest.raises(MaskError, match=r"references instances not in the series .*1 SOP Instance UID"):
            read_mask_volume(mask, fewer, structures=["lesion"], target_shape=(4, 8, 8))

    def test_seg_of_another_series(self, series_and_seg: SeriesAndSeg, tmp_path: Path) -> None:
        series, _, _, _ = series_and_seg
        others, other_labels = ct_series(tmp_path / "other", seed=1)
        mask = save(segmentation(others, other_labels), tmp_path / "other-seg.dcm")
        with pytest.raises(MaskError, match="mask of another series|frame of reference differs"):
            read_mask_volume(mask, series, structures=["lesion"], target_shape=(4, 8, 8))

    @pytest.mark.parametrize("reverse", [False, True])
    def test_nifti_round_trip(self, series_and_seg: SeriesAndSeg, tmp_path: Path, reverse: bool) -> None:
        series, labels, datasets, _ = series_and_seg
        labels = labels.copy()
        labels[0, 0, 0] = 1  # a corner, to catch flips
        mask = write_nifti_3d(tmp_path / "m.nii.gz", labels, datasets, reverse_slices=reverse)
        np.testing.assert_array_equal(read_label_map_volume(mask, series, structures=["lesion"]), labels)

    def test_nifti_wrong_shape(self, series_and_seg: SeriesAndSeg, tmp_path: Path) -> None:
        series, labels, datasets, _ = series_and_seg
        mask = write_nifti_3d(tmp_path / "m.nii.gz", labels, datasets, shape_override=(10, 12, 5))
        with pytest.raises(MaskError, match=r"mask size differs .*\(5, 12, 10\) in the image's axes.* \(6, 12, 10\)"):
            read_mask_volume(mask, series, structures=["lesion"], target_shape=(4, 8, 8))


def test_a_free_text_segment_label_matches_its_config_name() -> None:
    """Segment Label (0062,0005) is free text: "Left Lung" in a SEG written elsewhere is ``left_lung``."""
    from fedmed.data.masks import structure_key

    assert structure_key("Left Lung") == structure_key(" left-lung ") == "left_lung"
    assert structure_key("first segment") == "first_segment"
    assert structure_key("Lesion") == "lesion"

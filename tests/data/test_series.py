"""Tests for fedmed.data.series and fedmed.data.volume: grouping, ordering, checks, reading, preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

import fedmed.data.series as series_module
from fedmed.data.dicom import DicomReadError
from fedmed.data.series import (
    DicomSeries,
    SeriesError,
    SeriesGrouping,
    SeriesProblem,
    group_series,
    read_volume,
)
from fedmed.data.volume import (
    VOLUME_PREPROCESSING_VERSION,
    preprocess_volume,
    resampled_shape,
    volume_preprocessing_key,
)
from fedmed.errors import DataError
from tests.data.dicom_series import (
    AXIAL,
    COLUMNS,
    OBLIQUE,
    PIXEL_SPACING,
    ROWS,
    base_dataset,
    stored_slice,
    write_enhanced_ct,
    write_series,
)


def only_series(grouping: SeriesGrouping) -> DicomSeries:
    assert not grouping.refused and not grouping.skipped, (grouping.problems, grouping.skipped)
    assert len(grouping.series) == 1
    return grouping.series[0]


def only_problem(grouping: SeriesGrouping, reason: str) -> SeriesProblem:
    assert not grouping.series and len(grouping.refused) == 1
    problems = grouping.refused[0].problems
    assert [p.reason for p in problems] == [reason], problems
    return problems[0]


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --- ordering and geometry -----------------------------------------------------------------


class TestOrdering:
    @pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
    def test_slices_follow_position_not_name_or_instance_number(self, tmp_path: Path, orientation) -> None:
        written = write_series(tmp_path, orientation=orientation, spacing=2.5)
        by_position = sorted(written, key=lambda w: w.location)
        # the fixture really disagrees with both other orders
        assert [w.path for w in by_position] != sorted(w.path for w in written)
        instance = [pydicom.dcmread(w.path).InstanceNumber for w in by_position]
        assert instance != sorted(instance)

        series = only_series(group_series(files_in(tmp_path)))
        assert [Path(s.path) for s in series.slices] == [w.path for w in by_position]
        np.testing.assert_allclose([s.location for s in series.slices], [w.location for w in by_position], atol=1e-4)
        assert series.slice_spacing == pytest.approx(2.5, abs=1e-4)
        assert series.spacing == pytest.approx((2.5, 0.8, 0.7), abs=1e-4)
        assert series.shape == (6, ROWS, COLUMNS) and not series.is_single_slice

        volume = read_volume(series)
        assert volume.voxels.dtype == np.float32 and volume.voxels.shape == (6, ROWS, COLUMNS)
        np.testing.assert_allclose(volume.voxels, np.stack([w.hu for w in by_position]))

    def test_affine_maps_voxel_indices_to_patient_positions(self, tmp_path: Path) -> None:
        written = write_series(tmp_path, orientation=OBLIQUE)
        volume = read_volume(only_series(group_series(files_in(tmp_path))))
        last = pydicom.dcmread(max(written, key=lambda w: w.location).path)
        # voxel (last slice, row 0, column 0) is the last slice's ImagePositionPatient
        np.testing.assert_allclose((volume.affine @ [5, 0, 0, 1])[:3], [float(v) for v in last.ImagePositionPatient],
                                   atol=1e-3)
        # one column step moves PixelSpacing[1] along the row direction cosines
        step = volume.affine @ [0, 0, 1, 1] - volume.affine @ [0, 0, 0, 1]
        np.testing.assert_allclose(step[:3], np.array(OBLIQUE[:3]) * PIXEL_SPACING[1], atol=1e-5)

    def test_default_window_is_the_middle_slices_first_window(self, tmp_path: Path) -> None:
        write_series(tmp_path, count=5)
        volume = read_volume(only_series(group_series(files_in(tmp_path))))
        assert volume.window == (42.0, 400.0)  # slice 2 of 0..4: center 40 + 2, first of two windows
        assert volume.photometric == "MONOCHROME2"

    def test_two_series_in_one_folder_are_two_good_series(self, tmp_path: Path) -> None:
        write_series(tmp_path, count=4, description="AX soft", seed=1, prefix="A")
        write_series(tmp_path, count=5, description="AX bone", seed=2, spacing=1.25, prefix="B")
        grouping = group_series(files_in(tmp_path))
        assert not grouping.refused and not grouping.skipped
        assert sorted(s.depth for s in grouping.series) == [4, 5]
        assert {s.identity.description for s in grouping.series} == {"AX soft", "AX bone"}

    def test_single_slice_is_marked(self, tmp_path: Path) -> None:
        write_series(tmp_path / "thickness", count=1, steps=[])
        series = only_series(group_series(files_in(tmp_path / "thickness")))
        assert series.is_single_slice and series.depth == 1
        assert series.slice_spacing == 2.5  # SliceThickness when there is no neighbour
        write_series(tmp_path / "spacing", count=1, steps=[], per_slice={0: {"SpacingBetweenSlices": 3.0}})
        assert only_series(group_series(files_in(tmp_path / "spacing"))).slice_spacing == 3.0
        assert read_volume(series).voxels.shape == (1, ROWS, COLUMNS)

    def test_single_2d_image_without_geometry_is_a_one_slice_series(self, tmp_path: Path) -> None:
        write_series(tmp_path, count=1, steps=[], drop=("ImagePositionPatient", "ImageOrientationPatient"))
        series = only_series(group_series(files_in(tmp_path)))
        assert series.is_single_slice and series.orientation is None


class TestEnhancedMultiFrame:
    def test_gives_the_same_volume_as_the_classic_series(self, tmp_path: Path) -> None:
        write_series(tmp_path / "classic")
        write_enhanced_ct(tmp_path / "enhanced.dcm")
        classic = read_volume(only_series(group_series(files_in(tmp_path / "classic"))))
        enhanced_series = only_series(group_series([tmp_path / "enhanced.dcm"]))
        assert enhanced_series.enhanced and enhanced_series.files == (str(tmp_path / "enhanced.dcm"),)
        assert [s.frame for s in enhanced_series.slices] != sorted(s.frame for s in enhanced_series.slices)
        enhanced = read_volume(enhanced_series)
        np.testing.assert_array_equal(enhanced.voxels, classic.voxels)
        assert enhanced.spacing == pytest.approx(classic.spacing)
        assert enhanced.window == classic.window
        np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-6)

    def test_a_missing_frame_position_is_named(self, tmp_path: Path) -> None:
        path = tmp_path / "enhanced.dcm"
        write_enhanced_ct(path)
        ds = pydicom.dcmread(path)
        del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
        ds.save_as(path)
        problem = only_problem(group_series([path]), "missing ImagePositionPatient")
        assert "enhanced.dcm frame 3" in problem.detail

    def test_classic_multi_frame_cine_is_not_a_volume(self, tmp_path: Path) -> None:
        ds = base_dataset(StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4", Modality="US",
                          ImagePositionPatient=[0, 0, 0], ImageOrientationPatient=list(AXIAL), PixelSpacing=[1, 1])
        ds.set_pixel_data(np.stack([stored_slice(k) for k in range(4)]), "MONOCHROME2", 12)
        ds.save_as(tmp_path / "cine.dcm", enforce_file_format=True)
        problem = only_problem(group_series([tmp_path / "cine.dcm"]), "multi-frame without frame positions")
        assert problem.files == (str(tmp_path / "cine.dcm"),)


# --- refused series ------------------------------------------------------------------------


class TestChecks:
    def test_missing_slice_names_the_positions_and_files_around_the_gap(self, tmp_path: Path) -> None:
        written = write_series(tmp_path, steps=[2.5, 2.5, 5.0, 2.5, 2.5])
        problem = only_problem(group_series(files_in(tmp_path)), "missing slice")
        before, after = sorted(written, key=lambda w: w.location)[2:4]
        assert set(problem.files) == {str(before.path), str(after.path)}
        assert f"{before.location:.3f} mm ({before.path.name})" in problem.detail
        assert f"{after.location:.3f} mm ({after.path.name})" in problem.detail
        assert "1 slice(s) missing" in problem.detail and "re-send" in problem.detail

    def test_uneven_spacing(self, tmp_path: Path) -> None:
        write_series(tmp_path, steps=[2.5, 2.5, 3.4, 2.5, 2.5])
        problem = only_problem(group_series(files_in(tmp_path)), "uneven spacing")
        assert "3.400 mm between" in problem.detail and "2.500 mm (median)" in problem.detail

    def test_small_position_jitter_is_not_uneven(self, tmp_path: Path) -> None:
        series = only_series(group_series([w.path for w in write_series(tmp_path, steps=[2.5, 2.501, 2.499, 2.5])]))
        assert series.slice_spacing == pytest.approx(2.5, abs=1e-3)

    def test_mixed_orientations_name_the_odd_file(self, tmp_path: Path) -> None:
        written = write_series(tmp_path, per_slice={3: {"ImageOrientationPatient": [1, 0, 0, 0, 0, -1]}})
        problem = only_problem(group_series(files_in(tmp_path)), "mixed orientations")
        assert problem.files == (str(written[3].path),)
        assert written[3].path.name in problem.detail and "(0020,0037)" in problem.detail

    def test_orientation_rounding_is_within_tolerance(self, tmp_path: Path) -> None:
        write_series(tmp_path, per_slice={3: {"ImageOrientationPatient": [1, 0.00001, 0, 0, 0.99999, 0]}})
        assert only_series(group_series(files_in(tmp_path))).depth == 6

    def test_another_patients_slice_is_named_without_printing_patient_ids(self, tmp_path: Path) -> None:
        written = write_series(tmp_path, per_slice={2: {"PatientID": "OTHER-77"}})
        problem = only_problem(group_series(files_in(tmp_path)), "another patient's slice")
        assert problem.files == (str(written[2].path),)
        assert written[2].path.name in problem.detail and "(0010,0020)" in problem.detail
        assert "OTHER-77" not in str(problem) and "PAT-0001" not in str(problem)

    def test_duplicate_positions_name_both_files(self, tmp_path: Path) -> None:
        written = write_series(tmp_path, steps=[2.5, 2.5, 0.0, 2.5, 2.5])
        problem = only_problem(group_series(files_in(tmp_path)), "duplicate positions")
        assert set(problem.files) == {str(written[2].path), str(written[3].path)}
        assert written[2].path.name in problem.detail and written[3].path.name in problem.detail

    def test_mixed_pixel_spacing(self, tmp_path: Path) -> None:
        write_series(tmp_path, per_slice={1: {"PixelSpacing": [0.5, 0.5]}})
        assert "(0028,0030)" in only_problem(group_series(files_in(tmp_path)), "mixed pixel spacing").detail

    def test_colour_slice(self, tmp_path: Path) -> None:
        written = write_series(tmp_path, count=3)
        ds = pydicom.dcmread(written[1].path)
        ds.set_pixel_data(np.zeros((ROWS, COLUMNS, 3), dtype=np.uint8), "RGB", 8)
        ds.save_as(written[1].path)
        problem = only_problem(group_series(files_in(tmp_path)), "colour slice")
        assert problem.files == (str(written[1].path),) and "(0028,0002)" in problem.detail

    @pytest.mark.parametrize(
        ("keyword", "tag"),
        [("ImagePositionPatient", "(0020,0032)"), ("ImageOrientationPatient", "(0020,0037)"),
         ("PixelSpacing", "(0028,0030)")],
    )
    def test_missing_geometry_tag_is_named(self, tmp_path: Path, keyword: str, tag: str) -> None:
        written = write_series(tmp_path, per_slice={4: {keyword: None}})
        problem = only_problem(group_series(files_in(tmp_path)), f"missing {keyword}")
        assert problem.files == (str(written[4].path),)
        assert tag in problem.detail and "1 of 6 slices" in problem.detail

    def test_gantry_tilt_is_refused(self, tmp_path: Path) -> None:
        tilted = {k: {"ImagePositionPatient": [-20.0, -30.0 + 0.5 * k * 2.5, 40.0 + k * 2.5]} for k in range(6)}
        write_series(tmp_path, per_slice=tilted)
        only_problem(group_series(files_in(tmp_path)), "positions off the slice normal")

    def test_a_bad_series_leaves_the_others_alone(self, tmp_path: Path) -> None:
        write_series(tmp_path / "good", description="good")
        write_series(tmp_path / "bad", steps=[2.5, 5.0, 2.5], description="bad")
        grouping = group_series(files_in(tmp_path))
        assert [s.identity.description for s in grouping.series] == ["good"]
        assert [r.identity.description for r in grouping.refused] == ["bad"]
        assert str(tmp_path / "bad") in str(grouping.problems[0])  # the message names the folder
        assert "SeriesInstanceUID" in str(grouping.problems[0])


class TestTooLarge:
    def test_refused_when_grouping_from_the_header(self, tmp_path: Path) -> None:
        write_series(tmp_path)
        problem = only_problem(group_series(files_in(tmp_path), max_volume_bytes=1000), "volume too large")
        assert f"6 slices x {ROWS} (0028,0010) Rows x {COLUMNS}" in problem.detail
        assert f"{6 * ROWS * COLUMNS * 4:,} bytes" in problem.detail and "1,000 bytes" in problem.detail

    def test_read_volume_refuses_before_decoding(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        write_series(tmp_path)
        series = only_series(group_series(files_in(tmp_path)))

        def must_not_decode(*args: object, **kwargs: object) -> None:
            raise AssertionError("pixels were decoded")

        monkeypatch.setattr(series_module, "decode_pixels", must_not_decode)
        with pytest.raises(SeriesError, match="volume too large") as caught:
            read_volume(series, max_volume_bytes=series.volume_bytes - 1)
        assert caught.value.problem.reason == "volume too large"
        assert isinstance(caught.value, DataError)


class TestSkippedFiles:
    def test_non_dicom_non_image_and_unidentified_files_are_skipped_with_reasons(self, tmp_path: Path) -> None:
        write_series(tmp_path, count=3)
        (tmp_path / "notes.txt").write_text("not an image")
        report = base_dataset("1.2.840.10008.5.1.4.1.1.88.33", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.9")
        report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
        no_uid = pydicom.dcmread(files_in(tmp_path)[0])
        del no_uid.SeriesInstanceUID
        no_uid.save_as(tmp_path / "no_uid.dcm")
        grouping = group_series(files_in(tmp_path))
        assert len(grouping.series) == 1 and grouping.series[0].depth == 3
        reasons = {Path(e.path).name: e.reason for e in grouping.skipped}
        assert reasons == {"notes.txt": "not a DICOM file", "report.dcm": "no pixel data",
                           "no_uid.dcm": "no series identity"}
        assert all(isinstance(e, DicomReadError) for e in grouping.skipped)

    def test_pydicoms_shipped_files_are_all_accounted_for(self) -> None:
        root = Path(pydicom.__file__).parent / "data" / "test_files"
        paths = files_in(root)
        assert len(paths) > 100
        grouping = group_series(paths)
        accounted = [f for s in grouping.series for f in s.files]
        accounted += [f for r in grouping.refused for f in r.files]
        accounted += [e.path for e in grouping.skipped]
        assert sorted(accounted) == sorted(str(p) for p in paths)
        reasons = {Path(e.path).name: e.reason for e in grouping.skipped}
        assert reasons["DICOMDIR"] == "not an image" and reasons["liver_1frame.dcm"] == "not an image"
        assert reasons["test-SR.dcm"] == "no pixel data" and reasons["README.txt"] == "not a DICOM file"
        # the DICOMDIR test folder holds real multi-slice CT and MR series
        assert max(s.depth for s in grouping.series) >= 3
        refused_reasons = {p.reason for p in grouping.problems}
        assert "colour slice" in refused_reasons


# --- preprocessing -------------------------------------------------------------------------


@pytest.fixture
def ct_volume(tmp_path: Path):
    write_series(tmp_path, count=6, spacing=2.5)
    return read_volume(only_series(group_series(files_in(tmp_path))))


class TestPreprocessVolume:
    def test_resample_to_a_spacing(self, ct_volume) -> None:
        assert resampled_shape((6, ROWS, COLUMNS), ct_volume.spacing, (1.25, 1.6, 1.4)) == (12, 3, 4)
        out = preprocess_volume(ct_volume, target_spacing=(1.25, 1.6, 1.4))
        assert out.dtype == np.float32 and out.shape == (1, 12, 3, 4)
        assert out.min() >= 0.0 and out.max() <= 1.0

    def test_resize_to_a_shape_averages_when_shrinking(self, ct_volume) -> None:
        out = preprocess_volume(ct_volume, target_shape=(3, 3, 4), window=(0.0, 10_000.0))
        assert out.shape == (1, 3, 3, 4)
        # area averaging keeps the mean of a linear window
        full = preprocess_volume(ct_volume, window=(0.0, 10_000.0))
        assert out.mean() == pytest.approx(full.mean(), rel=1e-5)

    def test_spacing_then_shape_pads_or_crops(self, ct_volume) -> None:
        out = preprocess_volume(ct_volume, target_spacing=(2.5, 0.8, 0.7), target_shape=(8, 4, 10),
                                window=(0.0, 10_000.0))
        assert out.shape == (1, 8, 4, 10)
        assert (out[0, 1:7, :, 1:9] > 0).all()  # the volume itself, cropped from 6 to 4 rows
        assert (out[0, 0] == 0).all() and (out[0, :, :, 0] == 0).all()  # padding, below the window

    def test_given_hu_window_wins_over_the_files(self, ct_volume) -> None:
        center, width = 100.0, 200.0
        out = preprocess_volume(ct_volume, window=(center, width))
        expected = np.clip((ct_volume.voxels - (center - width / 2)) / width, 0, 1)
        np.testing.assert_allclose(out[0], expected, atol=1e-6)
        from_file = preprocess_volume(ct_volume)
        center, width = ct_volume.window
        np.testing.assert_allclose(from_file[0], np.clip((ct_volume.voxels - (center - width / 2)) / width, 0, 1),
                                   atol=1e-6)
        assert not np.allclose(out, from_file)

    def test_without_any_window_a_robust_min_max(self, ct_volume) -> None:
        plain = series_module.Volume(ct_volume.voxels, ct_volume.spacing, None, "MONOCHROME2", ct_volume.series)
        out = preprocess_volume(plain)
        assert out.min() == 0.0 and out.max() == 1.0
        blank = series_module.Volume(np.zeros_like(ct_volume.voxels), ct_volume.spacing, None, "MONOCHROME2",
                                     ct_volume.series)
        with pytest.raises(DataError, match="blank volume"):
            preprocess_volume(blank)

    def test_monochrome1_is_inverted_after_windowing(self, ct_volume) -> None:
        inverted = series_module.Volume(ct_volume.voxels, ct_volume.spacing, ct_volume.window, "MONOCHROME1",
                                        ct_volume.series)
        np.testing.assert_allclose(preprocess_volume(inverted), 1.0 - preprocess_volume(ct_volume), atol=1e-6)

    def test_deterministic_and_keyed_by_its_parameters(self, ct_volume) -> None:
        kwargs = {"target_spacing": (2.0, 1.0, 1.0), "target_shape": None, "window": (40.0, 400.0)}
        np.testing.assert_array_equal(preprocess_volume(ct_volume, **kwargs), preprocess_volume(ct_volume, **kwargs))
        key = volume_preprocessing_key(**kwargs)
        assert f"v{VOLUME_PREPROCESSING_VERSION}" in key
        assert key != volume_preprocessing_key(**{**kwargs, "window": None})
        assert key != volume_preprocessing_key(**{**kwargs, "target_spacing": (2.0, 1.0, 1.5)})

    @pytest.mark.parametrize(
        "kwargs",
        [{"target_spacing": (0.0, 1.0, 1.0)}, {"target_shape": (4, 4)}, {"window": (40.0, 0.0)}],
    )
    def test_invalid_parameters_are_refused(self, ct_volume, kwargs) -> None:
        with pytest.raises(ValueError):
            preprocess_volume(ct_volume, **kwargs)

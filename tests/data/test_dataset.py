"""Tests for fedmed.data.dataset: manifests, skipping bad files, and refusing unusable sites."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmed.config import InputConfig
from fedmed.data.dataset import ImageSet, ManifestRow, SkippedFile, load_site_data
from fedmed.data.synth import synthesize_hospitals
from fedmed.errors import DataError

N_IMAGES = 40
SIZE = 32


@pytest.fixture(scope="module")
def pristine_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (site,) = synthesize_hospitals(
        tmp_path_factory.mktemp("dataset"), n_sites=1, images_per_site=N_IMAGES, image_size=SIZE
    )
    return site


@pytest.fixture
def site(pristine_site: Path, tmp_path: Path) -> Path:
    """A private copy each test may damage."""
    return Path(shutil.copytree(pristine_site, tmp_path / "site-a"))


def manifest_rows(site: Path) -> list[dict[str, str]]:
    with open(site / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def write_manifest(site: Path, lines: list[str]) -> None:
    (site / "labels.csv").write_text("\n".join(["file,label,split", *lines]) + "\n")


def test_loads_a_synthesized_site(site: Path) -> None:
    data = load_site_data(site, spec=InputConfig(image_size=SIZE))
    assert len(data.train) + len(data.test) == N_IMAGES and data.skipped == []
    assert data.site_dir == site
    for part in (data.train, data.test):
        assert isinstance(part, ImageSet)
        assert part.images.shape == (len(part), 1, SIZE, SIZE)
        assert part.images.dtype == torch.float32 and part.targets.dtype == torch.float32
        assert part.images.min() >= 0.0 and part.images.max() <= 1.0
        assert set(part.targets.tolist()) == {0.0, 1.0}
        assert len(part.metadata) == len(part.files) == len(part)
        assert {m.sex for m in part.metadata} <= {"M", "F"}
        assert all(m.manufacturer == "Acme Imaging" for m in part.metadata)
    rows = {r["file"]: r for r in manifest_rows(site)}
    assert all(rows[f]["split"] == "test" for f in data.test.files)
    assert [float(rows[f]["label"]) for f in data.train.files] == data.train.targets.tolist()
    x, y = data.train.as_torch_dataset()[0]
    assert x.shape == (1, SIZE, SIZE) and y.item() in (0.0, 1.0)


def test_resizes_on_load(site: Path) -> None:
    assert load_site_data(site, spec=InputConfig(image_size=16)).train.images.shape[-2:] == (16, 16)


def test_corrupt_files_are_skipped_and_listed(site: Path) -> None:
    rows = manifest_rows(site)
    truncated, text, empty = rows[0]["file"], rows[1]["file"], rows[2]["file"]
    (site / truncated).write_bytes((site / truncated).read_bytes()[:-300])
    (site / text).write_text("this is not an image")
    (site / empty).write_bytes(b"")
    data = load_site_data(site, spec=InputConfig(image_size=SIZE))
    assert len(data.train) + len(data.test) == N_IMAGES - 3
    reasons = {s.path: s.reason for s in data.skipped}
    assert set(reasons) == {truncated, text, empty}
    assert reasons[truncated].startswith("pixel data is truncated")
    assert reasons[text] == reasons[empty] == "not a DICOM file"
    assert all(isinstance(s, SkippedFile) for s in data.skipped)
    assert truncated not in data.train.files + data.test.files


def test_cache_is_used_when_given(site: Path, tmp_path: Path) -> None:
    first = load_site_data(site, spec=InputConfig(image_size=SIZE), cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == N_IMAGES
    second = load_site_data(site, spec=InputConfig(image_size=SIZE), cache_dir=tmp_path / "cache")
    assert torch.equal(first.train.images, second.train.images)


def test_a_cached_load_reads_no_header(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tags are stored beside each cached image: a cached epoch neither decodes nor parses a header."""
    from fedmed.data import dataset as dataset_module

    first = load_site_data(site, spec=InputConfig(image_size=SIZE), cache_dir=tmp_path / "cache")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a header was parsed on a cache hit")

    monkeypatch.setattr(dataset_module, "read_dicom_metadata", refuse)
    monkeypatch.setattr(dataset_module, "read_dicom_image", refuse)
    second = load_site_data(site, spec=InputConfig(image_size=SIZE), cache_dir=tmp_path / "cache")
    assert second.train.metadata == first.train.metadata and second.test.files == first.test.files


class FileMasks:
    """A task whose target is a file of its own beside the image (as a segmentation mask is)."""

    target_dtype = torch.int64

    def __init__(self) -> None:
        self.reads = 0

    def manifest_columns(self) -> tuple[str, ...]:
        return ("mask",)

    def manifest_problem(self, row: object) -> None:
        return None

    def read_target(self, row: ManifestRow, *, site_dir: Path, sources: object, spec: InputConfig) -> np.ndarray:
        self.reads += 1
        value = int((site_dir / row.values["mask"]).read_text())
        return np.full((spec.image_size, spec.image_size), value, dtype=np.int64)

    def target_files(self, row: ManifestRow) -> tuple[str, ...]:
        return (row.values["mask"],)

    def target_text(self, target: np.ndarray) -> str:
        return str(int(target.max()))


def test_a_cached_target_is_keyed_by_its_file_and_its_image(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached load reads neither the image nor the mask; a changed mask file is read again."""
    from fedmed.data import dataset as dataset_module

    rows = manifest_rows(site)
    (site / "masks").mkdir()
    for index in range(len(rows)):
        (site / "masks" / f"{index}.txt").write_text(str(index % 3))
    lines = [f"{row['file']},masks/{index}.txt,{row['split']}" for index, row in enumerate(rows)]
    (site / "labels.csv").write_text("\n".join(["file,mask,split", *lines]) + "\n")
    spec, cache = InputConfig(image_size=SIZE), tmp_path / "cache"
    reader = FileMasks()
    first = load_site_data(site, spec=spec, targets=reader, cache_dir=cache)
    assert reader.reads == N_IMAGES

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was read on a cache hit")

    with monkeypatch.context() as patched:
        patched.setattr(dataset_module, "read_dicom_metadata", refuse)
        patched.setattr(dataset_module, "read_dicom_image", refuse)
        second = load_site_data(site, spec=spec, targets=reader, cache_dir=cache)
    assert reader.reads == N_IMAGES  # every mask came from the cache
    assert torch.equal(first.train.targets, second.train.targets)
    assert torch.equal(first.test.targets, second.test.targets)

    (site / "masks" / "0.txt").write_text("7")  # one mask edited at the site
    third = load_site_data(site, spec=spec, targets=reader, cache_dir=cache)
    assert reader.reads == N_IMAGES + 1
    split = third.train if rows[0]["split"] == "train" else third.test
    assert int(split.targets[split.files.index(rows[0]["file"])].max()) == 7


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Site folder .*nowhere does not exist"):
        load_site_data(tmp_path / "nowhere", spec=InputConfig(image_size=SIZE))


def test_missing_manifest_says_how_to_make_one(site: Path) -> None:
    (site / "labels.csv").unlink()
    with pytest.raises(
        DataError,
        match=r"No labels manifest at .*labels.csv.*header 'file,split' and the task's columns \(binary: 'label'",
    ):
        load_site_data(site, spec=InputConfig(image_size=SIZE))


def test_manifest_without_required_column(site: Path) -> None:
    (site / "labels.csv").write_text("file,label\nimages/x.dcm,1\n")
    with pytest.raises(DataError, match="lacks column.*split"):
        load_site_data(site, spec=InputConfig(image_size=SIZE))


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("images/missing.dcm,1,train", r"line 3: unknown file 'images/missing.dcm'"),
        ("{good},2,train", r"line 3: label '2' .* must be 0 or 1"),
        ("{good},1,val", r"line 3: split 'val' .* must be train or test"),
        ("../outside.dcm,1,train", r"line 3: file '../outside.dcm' must be a path inside"),
        ("{first},1,test", r"line 3: file '.*' is listed twice \(first on line 2\)"),
        ("./{first},1,test", r"line 3: file '.*' is listed twice"),
    ],
)
def test_bad_manifest_rows_name_the_line(site: Path, bad_line: str, message: str) -> None:
    rows = manifest_rows(site)
    first, good = rows[0], rows[1]["file"]
    line = bad_line.format(good=good, first=first["file"])
    write_manifest(site, [f"{first['file']},{first['label']},{first['split']}", line])
    with pytest.raises(DataError, match=rf"labels.csv has 1 bad row.*{message}"):
        load_site_data(site, spec=InputConfig(image_size=SIZE))


def test_site_with_no_usable_image(site: Path) -> None:
    for row in manifest_rows(site):
        (site / row["file"]).write_bytes(b"broken")
    message = r"site-a has no usable train record: all \d+ .*not a DICOM file"
    with pytest.raises(DataError, match=message):
        load_site_data(site, spec=InputConfig(image_size=SIZE))


def test_site_with_no_usable_test_image(site: Path) -> None:
    for row in manifest_rows(site):
        if row["split"] == "test":
            (site / row["file"]).write_bytes(b"broken")
    with pytest.raises(DataError, match="site-a has no usable test record"):
        load_site_data(site, spec=InputConfig(image_size=SIZE))


def test_site_whose_manifest_lists_no_test_split(site: Path) -> None:
    rows = manifest_rows(site)
    write_manifest(site, [f"{r['file']},{r['label']},train" for r in rows])
    with pytest.raises(DataError, match="has no test record: labels.csv lists none"):
        load_site_data(site, spec=InputConfig(image_size=SIZE))

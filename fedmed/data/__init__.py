"""Site data: DICOM reading, a decoded-image cache, per-site datasets, folder checks and
synthetic hospitals for tests and demos."""

from fedmed.data.cache import PREPROCESSING_VERSION, ImageCache
from fedmed.data.check import FileReport, FolderReport, check_folder, render_report
from fedmed.data.dataset import (
    ImageSet,
    SiteData,
    SkippedFile,
    load_site_data,
    read_manifest,
)
from fedmed.data.dicom import (
    DicomMetadata,
    DicomReadError,
    read_dicom_image,
    read_dicom_metadata,
)
from fedmed.data.fingerprint import dataset_fingerprint
from fedmed.data.series import (
    DicomSeries,
    SeriesError,
    SeriesGrouping,
    SeriesProblem,
    Volume,
    group_series,
    read_volume,
)
from fedmed.data.synth import SITE_PROFILES, SiteProfile, synthesize_hospitals
from fedmed.data.synth_ct import CT_SITE_PROFILES, synthesize_ct_hospitals
from fedmed.data.volume import VOLUME_PREPROCESSING_VERSION, preprocess_volume, volume_preprocessing_key

__all__ = [
    "CT_SITE_PROFILES",
    "PREPROCESSING_VERSION",
    "SITE_PROFILES",
    "VOLUME_PREPROCESSING_VERSION",
    "DicomMetadata",
    "DicomReadError",
    "DicomSeries",
    "FileReport",
    "FolderReport",
    "ImageCache",
    "ImageSet",
    "SeriesError",
    "SeriesGrouping",
    "SeriesProblem",
    "SiteData",
    "SiteProfile",
    "SkippedFile",
    "Volume",
    "check_folder",
    "dataset_fingerprint",
    "group_series",
    "load_site_data",
    "preprocess_volume",
    "read_dicom_image",
    "read_dicom_metadata",
    "read_manifest",
    "read_volume",
    "render_report",
    "synthesize_ct_hospitals",
    "synthesize_hospitals",
    "volume_preprocessing_key",
]

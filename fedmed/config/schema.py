"""Typed, frozen experiment configuration: what a YAML file may say, and nothing else.

Every section rejects unknown keys, so a typo is an error rather than a silently ignored
setting. Paths are resolved against the directory of the file they were written in.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

ImageSize = Annotated[int, Field(ge=16, le=1024)]
"""Side of the square model input, in pixels."""

_SITE_ID = re.compile(r"[A-Za-z0-9._-]+")


def check_site_id(site: str) -> str:
    """A site id safe to name files after: letters, digits, '.', '_' and '-', not all dots.

    Ledgers and keys are stored as ``<site>.jsonl``; an id like ``../x`` must never reach a path.

    Raises:
        ValueError: anything else (pydantic reports it with the key's path).
    """
    if not isinstance(site, str) or not _SITE_ID.fullmatch(site) or set(site) == {"."}:
        raise ValueError(f"site id {site!r}: use letters, digits, '.', '_' and '-' only (and not only dots)")
    return site


SiteId = Annotated[str, AfterValidator(check_site_id)]


class Section(BaseModel):
    """Base of every config section: unknown keys rejected, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrategyName(StrEnum):
    FEDAVG = "fedavg"
    FEDPROX = "fedprox"


class AccountantName(StrEnum):
    """Opacus accountants: PRV is tight (an upper bound); RDP is the classic, looser one."""

    PRV = "prv"
    RDP = "rdp"


class DeviceName(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class SampleUnit(StrEnum):
    """What one training record is: one image file, or one series read as a volume."""

    IMAGE = "image"
    SERIES = "series"


class TaskKind(StrEnum):
    """What the federation predicts (fedmed.tasks holds one module per kind)."""

    BINARY = "binary"
    MULTILABEL = "multilabel"
    MULTICLASS = "multiclass"
    SEGMENTATION = "segmentation"


OutputName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
"""A label, class or structure name: lower-case letters, digits and '_' (it names manifest columns and metrics)."""

_NAMES_OF = {
    TaskKind.BINARY: None,
    TaskKind.MULTILABEL: "labels",
    TaskKind.MULTICLASS: "classes",
    TaskKind.SEGMENTATION: "structures",
}
_RESERVED = {"file", "split", "mask", "label"}


class TaskConfig(Section):
    """The task: what a manifest's targets are, the network's head, the loss and the metrics."""

    kind: TaskKind = TaskKind.BINARY
    labels: tuple[OutputName, ...] = ()
    """multilabel: the findings, each a 0/1 column of the manifest (``file,split,<label>,...``)."""
    classes: tuple[OutputName, ...] = ()
    """multiclass: the classes; the manifest's ``label`` column names one (or gives its index)."""
    structures: tuple[OutputName, ...] = ()
    """segmentation: the structures; mask value i (1-based) is the i-th, 0 is background."""

    @model_validator(mode="after")
    def _names_fit_the_kind(self) -> TaskConfig:
        wanted = _NAMES_OF[self.kind]
        for key in ("labels", "classes", "structures"):
            if key != wanted and getattr(self, key):
                raise ValueError(f"task {self.kind} takes no {key}" + (f"; name its {wanted}" if wanted else ""))
        if wanted is None:
            return self
        names = getattr(self, wanted)
        least = 2 if self.kind is TaskKind.MULTICLASS else 1
        if len(names) < least:
            raise ValueError(
                f"task {self.kind} needs {wanted}: at least {least}, e.g. "
                + {"labels": "labels: [nodule, effusion]", "classes": "classes: [mild, moderate, severe]",
                   "structures": "structures: [lesion]"}[wanted]
            )
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"task {wanted} must be unique; repeated: {', '.join(repeated)}")
        reserved = sorted(set(names) & _RESERVED) if self.kind is TaskKind.MULTILABEL else []
        if reserved:
            raise ValueError(
                f"task labels name manifest columns; {', '.join(reserved)} is taken by the manifest itself"
            )
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """The labels, classes or structures of this kind (empty for binary)."""
        wanted = _NAMES_OF[self.kind]
        return tuple(getattr(self, wanted)) if wanted else ()


SYNTHESIS_TASKS = {
    "radiograph": TaskKind.BINARY,
    "ct-series": TaskKind.BINARY,
    "multilabel": TaskKind.MULTILABEL,
    "multiclass": TaskKind.MULTICLASS,
    "segmentation": TaskKind.SEGMENTATION,
    "ct-segmentation": TaskKind.SEGMENTATION,
}
"""The task each kind of demo hospital is labelled for."""


class SynthesisConfig(Section):
    """Demo hospitals written by ``fedmed synth`` when the data folder is missing."""

    kind: Literal["radiograph", "ct-series", "multilabel", "multiclass", "segmentation", "ct-segmentation"] = (
        "radiograph"
    )
    """radiograph: one 2-D image per study, one label; ct-series: CT series, one file per slice;
    multilabel: radiographs with several findings; multiclass: radiographs with one class each
    (normal or one finding); segmentation / ct-segmentation: images or CT series with DICOM SEG masks."""
    images_per_site: Annotated[int, Field(ge=20)] = 600
    """Studies per site (each a series of ``slices`` files for ct-series)."""
    slices: Annotated[int, Field(ge=2, le=512)] = 16
    stored_size: Annotated[int, Field(ge=32, le=1024)] = 96
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25
    seed: int = 0


VolumeSide = Annotated[int, Field(ge=8, le=512)]
Millimetres = Annotated[float, Field(gt=0, le=50)]


class VolumeConfig(Section):
    """How a series becomes the model's volume: resampled, then windowed to [0, 1]."""

    shape: tuple[VolumeSide, VolumeSide, VolumeSide] = (32, 64, 64)
    """(depth, height, width) in voxels: every volume is resized to it."""
    spacing: tuple[Millimetres, Millimetres, Millimetres] | None = None
    """(slice, row, column) spacing in mm to resample to before the resize; None: as stored."""
    window: tuple[float, Annotated[float, Field(gt=0)]] | None = None
    """(centre, width) in modality units (HU for CT); None: the file's own VOI window."""


class InputConfig(Section):
    """What the model sees: it travels in the round plan, so every site prepares the same input."""

    sample: SampleUnit = SampleUnit.IMAGE
    image_size: ImageSize = 64
    """Side of the square 2-D input (sample: image)."""
    channels: Literal[1, 3] = 1
    """1: luminance (colour images are converted); 3: RGB (grayscale images repeat their channel)."""
    volume: VolumeConfig = VolumeConfig()
    """sample: series only."""

    @model_validator(mode="after")
    def _volumes_are_grayscale(self) -> InputConfig:
        if self.sample is SampleUnit.SERIES and self.channels != 1:
            raise ValueError("sample: series reads grayscale CT/MR volumes; set channels: 1")
        return self

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        if self.sample is SampleUnit.SERIES:
            return tuple(self.volume.shape)
        return (self.image_size, self.image_size)

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_shape)

    def input_only(self) -> InputConfig:
        """This section without any site-local setting (what a round plan carries)."""
        return InputConfig(
            sample=self.sample, image_size=self.image_size, channels=self.channels, volume=self.volume
        )


class DataConfig(InputConfig):
    root: Path
    """Folder holding one sub-folder of DICOM studies (and labels.csv) per site."""
    sites: Annotated[list[SiteId], Field(min_length=1)]
    cache_dir: Path | None = None
    """Decoded-image cache; default: each site's own state folder (``<state>/cache``, owner-only)."""
    synthesize: SynthesisConfig | None = None
    """When set and ``root`` is missing, demo hospitals are generated there."""

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, sites: list[str]) -> list[str]:
        duplicates = sorted({s for s in sites if sites.count(s) > 1})
        if duplicates:
            raise ValueError(f"site names must be unique; repeated: {', '.join(duplicates)}")
        return sites


class ModelConfig(Section):
    name: str = "small_cnn"
    """A network for 2-D images (sample: image) or 3-D volumes (sample: series): ``fedmed models``."""

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from fedmed.models import check_model_name  # MONAI: only when a model name is checked

        try:
            return check_model_name(name)
        except Exception as error:  # ConfigError -> pydantic's ValueError, with its text
            raise ValueError(str(error)) from None


class TrainingConfig(Section):
    rounds: Annotated[int, Field(ge=1)]
    local_epochs: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 64
    """Expected batch size; Poisson sampling draws each record with rate batch_size / N."""
    learning_rate: Annotated[float, Field(gt=0)] = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    strategy: StrategyName = StrategyName.FEDAVG
    proximal_mu: Annotated[float, Field(ge=0)] = 0.0
    """FedProx proximal weight; only used with strategy fedprox."""
    min_sites: Annotated[int, Field(ge=1)] | None = None
    """Fewest sites a round may aggregate; default: every site."""
    device: DeviceName = DeviceName.AUTO
    seed: int = 0
    """Seeds the initial model (public: every site receives it), never a site's DP randomness."""
    unsafe_reproducible: bool = False
    """UNSAFE, simulation only: each site draws its DP sampling and noise from ``seed`` and the
    round instead of the operating system's CSPRNG, so runs repeat bit for bit, and the
    server, which knows the seed, can subtract the noise: no privacy against the server.
    A site refuses it unless it is simulated and its policy sets unsafe_accept_reproducible;
    results.json and report.html say when it was on."""

    @model_validator(mode="after")
    def _fedprox_needs_mu(self) -> TrainingConfig:
        if self.strategy is StrategyName.FEDPROX and self.proximal_mu == 0:
            raise ValueError("strategy fedprox needs proximal_mu > 0 (0 is plain FedAvg)")
        return self


class PrivacyConfig(Section):
    """Sample-level DP-SGD at every site (Abadi et al. 2016), Poisson sampling."""

    target_epsilon: Annotated[float, Field(gt=0)] | None = None
    """Budget for the whole run; the noise is derived for the planned rounds and steps."""
    noise_multiplier: Annotated[float, Field(gt=0)] | None = None
    """Fixed noise instead of a target epsilon."""
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    accountant: AccountantName = AccountantName.PRV

    @model_validator(mode="after")
    def _one_noise_source(self) -> PrivacyConfig:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("set exactly one of target_epsilon and noise_multiplier")
        return self


class SecureAggregationConfig(Section):
    """Masked updates: the server learns only the sum of the sites' updates."""

    enabled: bool = True
    """On unless a config turns it off; a site whose policy requires it refuses to train without."""


class EvaluationConfig(Section):
    """Cross-site and subgroup evaluation at the end of a run, and which baselines to train."""

    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """Operating threshold on the model's score for sensitivity and specificity (binary task)."""
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    """Level of the bootstrap confidence intervals."""
    bootstrap_samples: Annotated[int, Field(ge=100)] = 1000
    finding_gap: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """A gap in the task's metric (AUROC, Dice) larger than this, with non-overlapping intervals,
    is reported as a finding."""
    local_models: bool = False
    """Each site also trains a model on its own data alone (same DP terms; spends its budget)."""
    pooled_baseline: bool = False
    """Simulation only: a model trained with DP-SGD on all sites' data pooled, the upper bound."""
    leave_one_site_out: bool = False
    """Simulation only: one federation without each site, evaluated on the site it never saw."""


class SimulationConfig(Section):
    """The virtual hospitals of Flower's simulation engine: resources and their own disks.

    In a real consortium each hospital's node config names its policy and state folder;
    in simulation the researcher plays every hospital, so this section stands in for them.
    """

    cpus_per_site: Annotated[int, Field(ge=1)] = 1
    """Whole CPUs per virtual hospital (Ray); also its torch thread count."""
    gpus_per_site: Annotated[float, Field(ge=0)] = 0.0
    site_policy: Path | None = None
    """Policy file every simulated hospital uses unless ``site_policies`` names its own."""
    site_policies: dict[SiteId, Path] = {}
    state_root: Path | None = None
    """Where simulated hospitals keep privacy books, ledgers and keys (one folder each);
    default: a ``<data.root>-state`` folder beside the data. It outlives runs, as a real
    hospital's does: a second run on the same data starts from the spend the first left."""

    def policy_for(self, site: str) -> Path | None:
        return self.site_policies.get(site, self.site_policy)


class ExperimentConfig(Section):
    name: str
    task: TaskConfig = TaskConfig()
    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig
    privacy: PrivacyConfig
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    simulation: SimulationConfig = SimulationConfig()

    @model_validator(mode="after")
    def _min_sites_fit(self) -> ExperimentConfig:
        if self.training.min_sites is not None and self.training.min_sites > len(self.data.sites):
            raise ValueError(
                f"training.min_sites is {self.training.min_sites} but data.sites lists only "
                f"{len(self.data.sites)} site(s)"
            )
        return self

    @model_validator(mode="after")
    def _model_fits_input(self) -> ExperimentConfig:
        from fedmed.models import model_spatial_dims  # MONAI: only when a config is checked

        dims, wanted = model_spatial_dims(self.model.name), self.data.spatial_dims
        if dims != wanted:
            raise ValueError(
                f"model {self.model.name} takes {dims}-D input but data.sample is {self.data.sample} "
                f"({wanted}-D); `fedmed models` lists the {wanted}-D networks"
            )
        from fedmed.models import check_model_input

        try:
            check_model_input(self.model.name, self.data)
        except Exception as error:  # ConfigError -> pydantic's ValueError, with its text
            raise ValueError(str(error)) from None
        return self

    @model_validator(mode="after")
    def _model_fits_task(self) -> ExperimentConfig:
        from fedmed.models import model_kind  # MONAI: only when a config is checked
        from fedmed.tasks import create_task

        task = create_task(self.task)
        kind = model_kind(self.model.name)
        if str(kind) != task.model_kind:
            raise ValueError(
                f"task {self.task.kind} needs a {task.model_kind} network, but model {self.model.name} is a "
                f"{kind}; `fedmed models` lists them by kind"
            )
        return self

    @model_validator(mode="after")
    def _demo_data_fits_task(self) -> ExperimentConfig:
        synth = self.data.synthesize
        if synth is not None and SYNTHESIS_TASKS[synth.kind] is not self.task.kind:
            raise ValueError(
                f"data.synthesize.kind {synth.kind} writes hospitals labelled for the {SYNTHESIS_TASKS[synth.kind]} "
                f"task, but task.kind is {self.task.kind}"
            )
        return self

    @model_validator(mode="after")
    def _policies_name_sites(self) -> ExperimentConfig:
        unknown = sorted(set(self.simulation.site_policies) - set(self.data.sites))
        if unknown:
            raise ValueError(f"simulation.site_policies names sites not in data.sites: {', '.join(unknown)}")
        return self

    @property
    def state_root(self) -> Path:
        root = self.data.root
        return self.simulation.state_root or root.with_name(f"{root.name}-state")

    @property
    def min_sites(self) -> int:
        return self.training.min_sites or len(self.data.sites)

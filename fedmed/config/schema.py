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


class SynthesisConfig(Section):
    """Demo hospitals written by ``fedmed synth`` when the data folder is missing."""

    kind: Literal["radiograph", "ct-series"] = "radiograph"
    """radiograph: one 2-D image per study; ct-series: CT series, one file per slice."""
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
    """Operating threshold on the model's score for sensitivity and specificity."""
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    """Level of the bootstrap confidence intervals."""
    bootstrap_samples: Annotated[int, Field(ge=100)] = 1000
    finding_gap: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """An AUROC gap larger than this, with non-overlapping intervals, is reported as a finding."""
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

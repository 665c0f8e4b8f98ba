"""What a build is: every parameter (:class:`BuildConfig`), where things are (:class:`BuildInputs`), the stages.

Configuration is one :class:`BuildConfig` (YAML or JSON file); ``BuildConfig.preset("paper")`` holds the
paper's defaults and ``"synthetic"`` the weight-free demo on the bundled synthetic scenes. ``profile``
(:data:`PROFILES`) sets, at once, every setting where the authors' released code differs from the paper's
text: ``paper`` (the default) or ``authors``; settings given explicitly beside it win.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import yaml

from multilabel_imagenet.builder import backbones, configs, relabel_maps
from multilabel_imagenet.builder.labeler import LabelerConfig

SPLITS = ("train", "validation")
STAGES = ("discover", "select", "train-labeler", "label", "package")
SHARDED_STAGES = ("discover", "select", "label")
RUNTIME_SETTINGS = ("num_workers", "crf_workers", "cpu_threads")
"""Settings that change how fast a build runs, never its results: a work directory may resume with others."""
CHECKPOINT = "labeler/head.safetensors"
LABELER_ERRORS = "labeler/errors.jsonl"
"""Images that failed to decode while the labeler trained (one JSON line per image)."""
PROFILES: dict[str, dict] = {
    "paper": {
        "resample": "bilinear",
        "select_mode": "paper",
        "labeler": {"pooling": "features", "patch_rule": "area", "drop_rule": "count"},
    },
    # github jchen175/MultiLabel-ImageNet, code/labeler: mask_level_relabel.py lines 66-68 (the mask resized to
    # 15 x 15 by cv2's INTER_LINEAR), the dataset's top-1 >= tau grouping by class, train_labeler.py line 90
    # (pool_first off: logits pooled), the bilinear mask resize then util.py line 80 (mask.bool()), util.py
    # lines 89-99 (Bernoulli patch dropout, empty -> whole image); the script trains online.
    "authors": {
        "resample": "cv2_linear",
        "select_mode": "authors",
        "labeler": {"pooling": "logits", "patch_rule": "bilinear", "drop_rule": "bernoulli", "training": "online"},
    },
}
"""What each profile sets; docs/build.md ("Profiles") says why."""
AMBIGUITY_JSON = "metadata/ambiguity.json"


@dataclass
class BuildConfig:
    """Every parameter of a build. Defaults are the paper's (``preset="paper"``)."""

    version: str = "1.0.0"
    profile: str = "paper"  # PROFILES: the paper's text, or the authors' released code where they differ
    maskcut_preset: str = "paper"  # the four configurations of Supp. A.2
    maskcut: list[dict] = field(default_factory=list)  # explicit configurations; replace the preset when given
    solver: str = "fast"  # normalised cut: "exact" (published, float64) or "fast" (batched torch)
    precision: str = "fp32"  # backbone forward passes (MaskCut, labeler): "fp32" as the authors run, or "bf16"
    dedup_iou: float = configs.DEFAULT_DEDUP_IOU  # our choice, see configs.DEFAULT_DEDUP_IOU
    tau_sel: float = relabel_maps.TAU_SELECT  # Supp. B.1
    select_mode: str = "paper"  # or "authors" (REFERENCE.md section 2)
    add_full_image: bool = False  # authors' variant only
    resample: str = "bilinear"  # how ReLabel maps meet masks (relabel_maps)
    labeler: dict = field(default_factory=lambda: asdict(LabelerConfig()))
    ambiguity_calibration: str = "real"  # Supp. E: calibrate on ReaL when the validation split is built; "none"
    shard_size: int = 1000  # images per shard file
    batch_size: int = 32  # images per backbone forward
    num_workers: int = 4  # decoding processes
    crf_workers: int = 4  # processes for pydensecrf-backend CRFs while the backbone runs the next batch; 0 = inline
    cpu_threads: int = 4  # threads for hole filling, self-check, resizing and RLE encoding of masks; 0 = inline
    seed: int = 0
    weights: dict = field(default_factory=dict)  # backbone name -> local weights (safetensors file or folder)

    def __post_init__(self) -> None:
        choices = {
            "solver": ("exact", "fast"),
            "precision": backbones.PRECISIONS,
            "select_mode": relabel_maps.SELECT_MODES,
            "resample": relabel_maps.RESAMPLE_MODES,
            "ambiguity_calibration": ("real", "none"),
            "profile": tuple(PROFILES),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def preset(cls, name: str) -> BuildConfig:
        if name == "paper":
            return cls()
        if name == "synthetic":
            # Few samples: more epochs than the paper's schedule would give them, trained from cached features so
            # the CPU demo takes a minute (benchmarks/synthetic_quality.py also trains online); otherwise the
            # paper's settings.
            demo_labeler = LabelerConfig(
                backbone="colour-texture", input_size=256, epochs=200, batch_size=32, training="cached"
            )
            return cls(
                maskcut_preset="synthetic",
                ambiguity_calibration="none",
                crf_workers=0,
                cpu_threads=0,
                labeler=asdict(demo_labeler),
                shard_size=32,
                batch_size=16,
                num_workers=0,
            )
        raise ValueError(f"unknown build preset {name!r}; known: paper, synthetic")

    def with_profile(self, name: str) -> BuildConfig:
        """This configuration with every setting of profile ``name`` (:data:`PROFILES`) applied."""
        if name not in PROFILES:
            raise ValueError(f"profile must be one of {tuple(PROFILES)}, got {name!r}")
        settings = dict(PROFILES[name])
        labeler = {**self.labeler, **settings.pop("labeler")}
        return replace(self, profile=name, labeler=asdict(LabelerConfig.from_dict(labeler)), **settings)

    @classmethod
    def from_dict(cls, data: dict) -> BuildConfig:
        """A configuration from its settings: those not given take their ``profile``'s value (default
        ``paper``), then the defaults; the labeler's settings are completed the same way."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown build settings {sorted(unknown)}; known: {sorted(known)}")
        profile = dict(PROFILES.get(data.get("profile", "paper"), {}))
        labeler = {**profile.pop("labeler", {}), **data.get("labeler", {})}
        config = cls(**{**profile, **data, "labeler": asdict(LabelerConfig.from_dict(labeler))})
        config.maskcut_configs()  # validate the nested settings now
        return config

    @classmethod
    def load(cls, path: str | Path) -> BuildConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the build configuration: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a build configuration is a mapping of settings")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    def dumps(self, fmt: str = "yaml") -> str:
        data = asdict(self)
        return json.dumps(data, indent=2) + "\n" if fmt == "json" else yaml.safe_dump(data, sort_keys=False)

    def maskcut_configs(self) -> tuple[configs.MaskCutConfig, ...]:
        if self.maskcut:
            return tuple(configs.MaskCutConfig(**c) for c in self.maskcut)
        return configs.preset(self.maskcut_preset)

    def labeler_config(self) -> LabelerConfig:
        return LabelerConfig.from_dict(self.labeler)


@dataclass
class BuildInputs:
    """Where things are: the images of one split, ReLabel maps (train), the work directory and the output."""

    images: Path
    split: str
    output: Path
    work_dir: Path
    relabel_maps: Path | None = None
    layout: str = "auto"
    labels: Path | None = None  # ground truth of a flat val folder
    labeler_checkpoint: Path | None = None  # reuse a trained labeler (a validation build reuses train's)
    proposals_from: Path | None = None  # CutLER's COCO JSON of MaskCut proposals, used instead of running MaskCut
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available here")
    return torch.device(device)

"""Typed configuration: dataclass defaults < a recipe's YAML < command-line overrides.

A recipe is one YAML file with three sections, ``data``, ``model`` and ``train``, whose keys are
the fields below. Overrides use dotted keys: ``model.d_model=32`` or ``train.max_steps=100``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BLOCK_TYPES = ("s4d", "mamba", "mamba2", "attention", "mlp")


@dataclass
class DataConfig:
    """Where the audio comes from and how each clip is shaped."""

    dataset: str = "speech_commands"  # "speech_commands" (SC09 layout) or "fsdd"
    root: str = "../shared/data/speech_commands_words"
    words: list[str] | None = None  # speech_commands: word folders to use; None = every folder
    sample_rate: int = 16000
    clip_samples: int = 16000  # every clip is padded (silence at the end) or cropped to this
    split_salt: str = ""  # speech_commands: salt the speaker hash to re-split a folder cut from one split
    packed_dir: str | None = None  # read `<split>.safetensors` made by `audiomamba data pack`
    skip_bad: bool = False  # skip (and count) unreadable files instead of stopping

    def __post_init__(self) -> None:
        if self.dataset not in ("speech_commands", "fsdd"):
            raise ValueError(f"data.dataset must be 'speech_commands' or 'fsdd', got {self.dataset!r}")
        if self.sample_rate <= 0 or self.clip_samples <= 0:
            raise ValueError("data.sample_rate and data.clip_samples must be positive")


@dataclass
class ModelConfig:
    """The SaShiMi U-Net and its blocks.

    ``outer`` lists the blocks of every non-center stage (used in the down path when
    ``down_layers`` and always in the up path); ``center`` lists the blocks of the center stage.
    Stage widths are ``d_model * expand**i`` for stage i = 0 .. len(pool).
    """

    d_model: int = 64
    pool: list[int] = field(default_factory=lambda: [4, 4])
    expand: int = 2
    outer: list[str] = field(default_factory=lambda: ["s4d", "mlp"])
    center: list[str] = field(default_factory=lambda: ["s4d", "mlp"])
    down_layers: bool = True
    dropout: float = 0.0
    n_classes: int = 0  # >0: class-conditional, with index n_classes meaning "no label"
    # Block settings.
    s4d_state: int = 64  # S4D state size N (N/2 complex conjugate pairs)
    mamba_state: int = 16
    mamba_expand: int = 2
    mamba_conv: int = 4  # also Mamba-2's conv width
    mamba2_state: int = 64  # Mamba-2's N, shared by its heads
    mamba2_headdim: int = 32  # channels per Mamba-2 head (P); expand * width must be a multiple
    attention_heads: int = 4
    attention_window: int = 256  # each position attends to this many, itself included
    mlp_expand: int = 2

    def __post_init__(self) -> None:
        for kind in [*self.outer, *self.center]:
            if kind not in BLOCK_TYPES:
                raise ValueError(f"unknown block type {kind!r}; choose from {BLOCK_TYPES}")
        if any(p < 1 for p in self.pool):
            raise ValueError(f"model.pool factors must be >= 1, got {self.pool}")
        if self.s4d_state % 2:
            raise ValueError("model.s4d_state must be even (complex conjugate pairs)")
        for name in ("mamba2_state", "mamba2_headdim", "attention_heads", "attention_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and logging."""

    out_dir: str = "runs/default"
    batch_size: int = 16
    max_steps: int = 1000
    lr: float = 2e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    ema: float = 0.0  # 0 disables; else the EMA decay of the weights (e.g. 0.999)
    init_from: str | None = None  # a checkpoint whose weights (EMA if kept) start a new run; --resume wins
    label_dropout: float = 0.1  # conditional models: share of labels replaced by "no label"
    speed_change: float = 0.0  # augmentation: each clip played at a speed drawn in 1 +- this (0: off)
    gain_db: float = 0.0  # augmentation: each clip scaled by a gain drawn in +- this many dB (0: off)
    bf16: bool = True  # autocast on CUDA; CPU always runs fp32
    compile: bool = False  # torch.compile the training forward (about a minute first; ~15% faster on sc09_mamba, H100)
    cuda_graphs: bool = False  # with compile, on one GPU: replay each step as CUDA graphs (1.9-2.4x on fsdd_8k, H200)
    seed: int = 0
    log_every: int = 10
    val_every: int = 200
    val_batches: int = 8
    ckpt_every: int = 200
    max_minutes: float = 0.0  # 0 = no limit; else stop cleanly (with a checkpoint) after this
    num_workers: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, raw: dict) -> "Recipe":
        unknown = set(raw) - {"data", "model", "train"}
        if unknown:
            raise ValueError(f"unknown recipe sections {sorted(unknown)}; expected data, model, train")
        return cls(
            data=_build(DataConfig, raw.get("data") or {}, "data"),
            model=_build(ModelConfig, raw.get("model") or {}, "model"),
            train=_build(TrainConfig, raw.get("train") or {}, "train"),
        )


def _build(cls, values: dict, section: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown keys in '{section}': {sorted(unknown)}; known: {sorted(names)}")
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {k: float(v) if types[k] == "float" and isinstance(v, (int, str)) else v for k, v in values.items()}
    return cls(**values)


def _parse_value(text: str, annotation: str) -> object:
    """Turn an override's text into the field's type; other types use YAML syntax ([4, 4], null).

    ``annotation`` is the field's type as written (a string, under postponed annotations).
    """
    if annotation == "float":
        return float(text)  # YAML 1.1 would read "1e-3" as a string
    if annotation == "int":
        return int(text)
    if annotation == "str":
        return text
    return yaml.safe_load(text)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to a raw recipe dict (returns a new dict)."""
    raw = {k: dict(v or {}) for k, v in raw.items()}
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    for item in overrides:
        key, sep, text = item.lstrip("-").partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in sections:
            raise ValueError(f"override {item!r} must look like section.key=value (data/model/train)")
        types = {f.name: f.type for f in dataclasses.fields(sections[section])}
        if name not in types:
            raise ValueError(f"unknown key {key!r}; known: {sorted(types)}")
        raw.setdefault(section, {})[name] = _parse_value(text, types[name])
    return raw


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a recipe YAML (or start from defaults when ``path`` is None) and apply overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
    return Recipe.from_dict(apply_overrides(raw, list(overrides)))

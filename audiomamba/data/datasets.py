"""Dataset layouts: which file belongs to which split, label and speaker.

Two layouts are read:
- Speech Commands (SC09 and its other words): ``root/<word>/<speaker>_nohash_<n>.wav``. Splits come
  from ``validation_list.txt`` / ``testing_list.txt`` when present, else from the dataset's own
  rule (SHA-1 of the speaker id -> a percentage; 10% validation, 10% test), so every speaker
  stays in one split.
- FSDD: ``root/recordings/<digit>_<speaker>_<take>.wav``; takes 0-4 are the test split. FSDD has
  no validation split of its own, so takes 5-9 serve as validation.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")
SC09_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FSDD_LABELS = [str(d) for d in range(10)]
_MAX_CLIPS_PER_CLASS = 2**27 - 1  # from the Speech Commands split rule


@dataclass(frozen=True)
class ClipRef:
    """One labelled recording on disk."""

    path: Path
    label: int
    speaker: str


def speech_commands_split(relative_path: str, salt: str = "", validation_pct: float = 10.0, test_pct: float = 10.0) -> str:
    """The Speech Commands split rule: hash the speaker id (the file name before ``_nohash_``).

    A non-empty ``salt`` is prepended to the speaker id before hashing: another speaker-disjoint
    partition with the same proportions, for folders cut from one official split.
    """
    speaker = re.sub(r"_nohash_.*$", "", Path(relative_path).name)
    digest = int(hashlib.sha1((salt + speaker).encode("utf-8")).hexdigest(), 16)
    pct = (digest % (_MAX_CLIPS_PER_CLASS + 1)) * (100.0 / _MAX_CLIPS_PER_CLASS)
    if pct < validation_pct:
        return "validation"
    if pct < validation_pct + test_pct:
        return "test"
    return "train"


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")


def speech_commands_clips(root: str | Path, split: str, words: list[str] | None = None,
                          salt: str = "") -> tuple[list[ClipRef], list[str]]:
    """Clips of one split of a Speech Commands layout, and the label names (the words, in order).

    ``salt`` re-partitions speakers (see :func:`speech_commands_split`); the official lists, when
    present, still take precedence.
    """
    root = Path(root)
    _check_root(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if words is None:
        words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not words:
        raise FileNotFoundError(f"no word folders under {root}")
    official = {}
    for name, listed_split in (("validation_list.txt", "validation"), ("testing_list.txt", "test")):
        if (root / name).is_file():
            official.update({line.strip(): listed_split for line in (root / name).read_text().split() if line.strip()})
    clips = []
    for label, word in enumerate(words):
        folder = root / word
        if not folder.is_dir():
            raise FileNotFoundError(f"word folder not found: {folder}")
        files = sorted(folder.glob("*.wav"))
        if not files:
            raise FileNotFoundError(f"word folder has no .wav files: {folder}")
        for path in files:
            rel = f"{word}/{path.name}"
            clip_split = official.get(rel, "train") if official else speech_commands_split(rel, salt)
            if clip_split == split:
                clips.append(ClipRef(path, label, path.name.split("_nohash_")[0]))
    if split == "train" and not clips and not official and not salt:
        raise ValueError(f"the Speech Commands split rule puts no clip of {root} in the training split (its "
                         f"speakers all belong to another official split); set data.split_salt to re-split by speaker")
    return clips, list(words)


def fsdd_clips(root: str | Path, split: str) -> tuple[list[ClipRef], list[str]]:
    """Clips of one FSDD split (``root`` holds ``recordings/`` or is that folder)."""
    root = Path(root)
    _check_root(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    files = sorted(folder.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"no FSDD .wav files under {folder}")
    clips = []
    for path in files:
        match = re.fullmatch(r"(\d)_([A-Za-z0-9-]+)_(\d+)\.wav", path.name)
        if match is None:
            raise ValueError(f"not an FSDD file name (<digit>_<speaker>_<take>.wav): {path}")
        digit, speaker, take = int(match[1]), match[2], int(match[3])
        clip_split = "test" if take < 5 else "validation" if take < 10 else "train"
        if clip_split == split:
            clips.append(ClipRef(path, digit, speaker))
    return clips, list(FSDD_LABELS)

"""The models shipped with audiomamba (see MODEL_CARD.md beside this file).

``WORDS_16K``: a class-conditional generator of the ten Speech Commands words at 16 kHz (a
checkpoint directory: bf16 EMA weights + config.json). ``CLASSIFIER_WORDS``: the speech classifier
trained on the same words, behind ``audiomamba eval`` and the demo's labels. ``sample``, ``nll``,
``eval`` and ``demo`` use these when no other checkpoint is given.

``FSDD_8K`` and ``CLASSIFIER_FSDD``: the same for the spoken digits 0-9 of FSDD at 8 kHz.
``classifier_for`` finds a shipped generator's classifier.
"""
from pathlib import Path

HERE = Path(__file__).parent
WORDS_16K = HERE / "words_16k"
CLASSIFIER_WORDS = HERE / "classifier_words"
FSDD_8K = HERE / "fsdd_8k"
CLASSIFIER_FSDD = HERE / "classifier_fsdd"


def classifier_for(checkpoint: str | Path) -> Path | None:
    """The shipped classifier of a shipped generator directory, else None."""
    shipped = {WORDS_16K.resolve(): CLASSIFIER_WORDS, FSDD_8K.resolve(): CLASSIFIER_FSDD}
    return shipped.get(Path(checkpoint).resolve())

"""The models shipped with audiomamba (see MODEL_CARD.md beside this file).

``WORDS_16K``: a class-conditional generator of the ten Speech Commands words at 16 kHz (a
checkpoint directory: bf16 EMA weights + config.json). ``CLASSIFIER_WORDS``: the speech classifier
trained on the same words, behind ``audiomamba eval`` and the demo's labels. ``sample``, ``nll``,
``eval`` and ``demo`` use these when no other checkpoint is given.
"""
from pathlib import Path

HERE = Path(__file__).parent
WORDS_16K = HERE / "words_16k"
CLASSIFIER_WORDS = HERE / "classifier_words"

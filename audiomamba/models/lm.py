"""The waveform language model: mu-law tokens -> SaShiMi backbone -> next-sample logits.

Training feeds the clip shifted right by one sample (the first input is the silence token), so
logits[:, t] predict token t from tokens < t. Generation calls ``step`` once per sample: it takes
the previous token and returns the logits of the next one, O(1) in the clip length.

Class conditioning (``n_classes > 0``) adds a label embedding to every input; label index
``n_classes`` means "no label", so one model samples both conditionally and unconditionally.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiomamba.config import ModelConfig
from audiomamba.data.mulaw import N_CLASSES, SILENCE
from audiomamba.models.sashimi import SaShiMi


class WaveformLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(N_CLASSES, cfg.d_model)
        self.label_embed = nn.Embedding(cfg.n_classes + 1, cfg.d_model) if cfg.n_classes else None
        self.backbone = SaShiMi(cfg)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, N_CLASSES)

    def check_labels(self, labels: torch.Tensor | None) -> None:
        """Raise if labels do not fit this model. Their range check waits for the GPU, so it is kept
        out of ``step``, skipped under torch.compile, where it would split the graph, and skipped by
        ``forward(..., labels_checked=True)`` (train() checks its data's labels once instead)."""
        if labels is None:
            return
        if self.label_embed is None:
            raise ValueError("this model is unconditional; it takes no labels")
        if torch.compiler.is_compiling():
            return
        if (labels < 0).any() or (labels > self.cfg.n_classes).any():
            raise ValueError(f"labels must lie in [0, {self.cfg.n_classes}] ({self.cfg.n_classes} = no label)")

    def label_vectors(self, labels: torch.Tensor | None, rows: int, device=None) -> torch.Tensor:
        """(rows, d_model): each row's label embedding, "no label" where labels is None; zeros for
        an unconditional model. What ``_input`` adds to the token embeddings."""
        if self.label_embed is None:
            return torch.zeros(rows, self.cfg.d_model, device=device)
        if labels is None:
            labels = torch.full((rows,), self.cfg.n_classes, dtype=torch.long, device=device)
        return self.label_embed.forward(labels.to(device))

    def _input(self, prev_tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings plus label embeddings; None labels mean "no label"."""
        x = self.embed.forward(prev_tokens.long())
        if self.label_embed is None:
            return x
        label_vectors = self.label_vectors(labels, len(prev_tokens), x.device)
        return x + (label_vectors[:, None] if x.dim() == 3 else label_vectors)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, *,
                labels_checked: bool = False) -> torch.Tensor:
        """tokens: (batch, L) the clip itself -> logits (batch, L, 256) for each of its samples.
        ``labels_checked``: the caller has range-checked the labels, so no check waits for the GPU."""
        if not labels_checked:
            self.check_labels(labels)
        batch, length = tokens.shape
        prev = F.pad(tokens.long(), (1, 0), value=SILENCE)[:, :length]
        stride = self.backbone.stride
        padded = -(-length // stride) * stride
        prev = F.pad(prev, (0, padded - length), value=SILENCE)  # causal: padding at the end is cut
        h = self.backbone(self._input(prev, labels))[:, :length]
        return self.head(self.norm(h))

    def initial_state(self, batch: int, device=None) -> dict:
        return self.backbone.initial_state(batch, device)

    def step(self, prev_token: torch.Tensor, state: dict, labels: torch.Tensor | None = None):
        """prev_token: (batch,) the last sample (SILENCE at the start) -> logits (batch, 256).

        Labels are not range-checked here (``check_labels`` syncs with the GPU); callers check once.
        """
        h, state = self.backbone.step(self._input(prev_token, labels), state)
        return self.head.forward(self.norm.forward(h)), state


def nll_bits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in bits per sample: logits (..., 256), tokens (...)."""
    loss = F.cross_entropy(logits.reshape(-1, N_CLASSES).float(), tokens.reshape(-1).long())
    return loss / torch.log(torch.tensor(2.0))

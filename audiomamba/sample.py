"""Autoregressive generation with the model's O(1)-per-sample recurrence, batched.

Each clip's log-likelihood is accumulated under the model's own distribution (temperature 1, no
top-p, no guidance), in bits, over every sample of the clip (a given prefix included), so it equals
what ``audiomamba nll`` computes for the same audio.

Classifier-free guidance (Ho & Salimans 2022) for a class-conditional model trained with label
dropout: each step runs the batch twice, with the label and with "no label", and samples from
``uncond + w * (cond - uncond)`` in logit space. w = 1 is plain conditional sampling; w > 1
trades diversity for clips that sound more like the requested word.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from audiomamba.data.mulaw import SILENCE, mulaw_decode
from audiomamba.models.lm import WaveformLM
from audiomamba.models.step_cache import parameters_fixed
from audiomamba.ops import triton_kernels


@dataclass
class Generation:
    """tokens (n, length) uint8; log2-likelihood per clip (n,), summed over its samples."""

    tokens: torch.Tensor
    loglik_bits: torch.Tensor
    labels: list[int | None]
    seeds: list[int]
    problems: dict[int, str] = field(default_factory=dict)  # clip index -> why it stopped early


def gumbel_(noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Fill ``noise`` in place with standard Gumbel noise, -log(-log(U)) for U uniform in (0, 1)."""
    return noise.uniform_(generator=generator).clamp_(min=1e-20).log_().neg_().log_().neg_()


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, gumbel: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of logits (batch, 256) with temperature and nucleus (top-p) sampling.

    gumbel: (batch, 256) Gumbel noise (``gumbel_``). Gumbel-max (argmax of logits/T plus
    Gumbel noise) draws from the softmax without a host sync, so a whole sampling step can live
    in a CUDA graph.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    scaled = logits if temperature == 1.0 else logits / temperature
    if top_p < 1.0:
        probs = torch.softmax(scaled, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        scaled = scaled.masked_fill(torch.zeros_like(outside).scatter(-1, order, outside), float("-inf"))
    return (scaled + gumbel).argmax(-1)


class OutputWeights(NamedTuple):
    """What a sampling step reads around the backbone: the final norm and the head, which make the
    logits, and the embeddings, which make the next step's input. H = d_model; model rows are the
    clips, twice over when guided (conditioned, then "no label")."""
    norm_weight: torch.Tensor  # (H,)
    norm_bias: torch.Tensor  # (H,)
    norm_eps: float
    head_weight: torch.Tensor  # (256, H)
    head_bias: torch.Tensor  # (256,)
    embed: torch.Tensor  # (256, H) the token embeddings
    label_vectors: torch.Tensor  # (model rows, H) each row's label embedding; zeros for an unconditional model

    @classmethod
    def of(cls, model: WaveformLM, labels: torch.Tensor | None, model_rows: int) -> "OutputWeights":
        label_vectors = model.label_vectors(labels, model_rows, model.embed.weight.device)
        return cls(model.norm.weight.detach(), model.norm.bias.detach(), model.norm.eps, model.head.weight.detach(),
                   model.head.bias.detach(), model.embed.weight.detach(), label_vectors.detach().contiguous())


class SampleLoop:
    """One batch of clips being generated: the model's recurrent state and every per-clip tensor
    (next input, tokens so far, log-likelihoods, liveness, sample count), all updated in place.

    ``step(residue)`` makes one sample for every clip with no host synchronisation: the backbone's
    step, then ``sample_tail`` (on CUDA one kernel), which makes the logits, draws the token and
    embeds it as the next input. The U-Net's control flow depends only on t mod stride, so on
    CUDA ``capture()`` records ``stride`` graphs, one per residue, and ``step`` replays them: one
    launch per sample instead of hundreds of kernels and the Python that issues them. Gumbel noise
    for ``stride`` samples is drawn ahead (``draw_noise``), so the graphs need no random number
    generator of their own.
    """

    def __init__(self, model: WaveformLM, labels: torch.Tensor | None, rows: int, length: int, *,
                 temperature: float, top_p: float, guidance: float, prefix: torch.Tensor | None,
                 generator: torch.Generator, device):
        self.model, self.generator = model, generator
        self.temperature, self.top_p, self.guidance = temperature, top_p, guidance
        model_rows = 2 * rows if guidance != 1.0 else rows
        self.stride = model.backbone.stride
        self.state = model.initial_state(model_rows, device)
        self.weights = OutputWeights.of(model, labels, model_rows)
        self.prefix = prefix
        self.next_input = torch.empty(model_rows, model.cfg.d_model, device=device)
        self.noise = torch.empty(self.stride, rows, 256, device=device)
        self.tokens = torch.empty(rows, length, dtype=torch.uint8, device=device)
        self.loglik = torch.empty(rows, dtype=torch.float64, device=device)
        self.alive = torch.empty(rows, dtype=torch.bool, device=device)
        self.failed_at = torch.empty(rows, dtype=torch.long, device=device)
        self.t = torch.empty(rows, dtype=torch.long, device=device)  # the sample each clip is at (all alike)
        self.graphs = None
        self.reset()

    def reset(self) -> None:
        """Back to the start of the clips (zero state, nothing generated)."""
        _zero_state(self.state)
        torch.add(self.weights.embed[SILENCE], self.weights.label_vectors, out=self.next_input)
        self.tokens.fill_(SILENCE)
        self.loglik.zero_()
        self.alive.fill_(True)
        self.failed_at.fill_(-1)
        self.t.zero_()

    def draw_noise(self) -> None:
        """Fresh Gumbel noise for the next ``stride`` samples."""
        gumbel_(self.noise, self.generator)

    def capture(self) -> None:
        """Record one CUDA graph per residue, after a warm-up that allocates and autotunes. What the
        warm-up makes (from noise not yet drawn) is discarded by ``reset``."""
        device = self.noise.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for residue in range(self.stride):
                self._sample(residue)
        torch.cuda.current_stream(device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        self.state["t"] = 0
        self.graphs = []
        for residue in range(self.stride):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._sample(residue)
            self.graphs.append(graph)
        self.reset()  # warm-up and capture bookkeeping must not leak into the clips

    def step(self, residue: int) -> None:
        """Make sample t for every clip, where t = residue (mod stride) is the next sample."""
        if self.graphs is None:
            self._sample(residue)
        else:
            self.graphs[residue].replay()
            self.state["t"] += 1

    def _sample(self, residue: int) -> None:
        h = self.model.backbone.step(self.next_input, self.state)[0]
        kernels = triton_kernels.load("sample_tail") if h.is_cuda and self.top_p == 1.0 else None
        tail = kernels.sample_tail if kernels else sample_tail_ref
        tail(h, self.weights, self.noise[residue], self.alive, self.failed_at, self.t, self.tokens, self.loglik,
             self.next_input, self.prefix, self.temperature, self.top_p, self.guidance)


def sample_tail_ref(h: torch.Tensor, weights: OutputWeights, gumbel: torch.Tensor, alive: torch.Tensor,
                    failed_at: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, loglik: torch.Tensor,
                    next_input: torch.Tensor, prefix: torch.Tensor | None, temperature: float, top_p: float,
                    guidance: float) -> None:
    """Everything a sampling step does after the backbone, for rows clips, in place and with no
    host sync: the logits, the draw, the bookkeeping, and the next input.

    h: (rows, H) the backbone's output, or (2 rows, H) when guided (conditioned rows, then
    unconditioned); weights: ``OutputWeights``; gumbel: (rows, 256) noise; alive (rows,) bool and
    failed_at (rows,) long: the non-finite guard; t: (rows,) long, the sample being made, moved on
    by one; tokens: (rows, length) uint8, column t is written; loglik: (rows,) fp64, the model's
    own log-likelihood is added; next_input: like h, set to the drawn tokens' embeddings plus
    their rows' label vectors; prefix: (P,) long tokens forced while t < P, or None.
    On CUDA, ``audiomamba_kernels.sample_tail`` does this in one kernel (top_p = 1 only)."""
    w = weights
    logits = F.linear(torch.layer_norm(h.float(), w.norm_weight.shape, w.norm_weight, w.norm_bias, w.norm_eps),
                      w.head_weight, w.head_bias)
    guided = guidance != 1.0
    sampling = logits
    if guided:
        logits, uncond = logits.chunk(2)
        sampling = uncond + guidance * (logits - uncond)
    log_probs = torch.log_softmax(logits, -1)
    # Finite logits give finite log-probabilities; a NaN or an infinity among them gives a NaN or
    # -inf, and so does their sum: one reduction in place of isfinite's several ops.
    finite = log_probs.sum(-1) > float("-inf")
    if guided:
        finite &= torch.isfinite(sampling).all(-1)
    torch.where(alive > finite, t, failed_at, out=failed_at)  # alive > finite: alive and not finite
    alive &= finite
    # A stopped row still draws and scores (from non-finite logits), but only SILENCE and 0 are kept.
    nxt = sample_next(sampling, temperature, top_p, gumbel)
    if prefix is not None:  # teacher-force the prefix while t < its length
        forced = prefix[t.clamp(max=len(prefix) - 1)]
        nxt = torch.where(t < len(prefix), forced, nxt)
    nxt = torch.where(alive, nxt, SILENCE)
    logp = log_probs.gather(-1, nxt.unsqueeze(1)).squeeze(1)
    loglik.add_(torch.where(alive, logp, 0.0))  # accumulated in fp64
    tokens.scatter_(1, t.unsqueeze(1), nxt.to(torch.uint8).unsqueeze(1))
    torch.add(w.embed[torch.cat([nxt, nxt]) if guided else nxt], w.label_vectors, out=next_input)
    t += 1


@contextlib.contextmanager
def _lean_ops(model: WaveformLM, device: torch.device):
    """Cheaper small ops while sampling: a small model's step is bound by per-op overhead.

    - Inference mode skips even no_grad's per-tensor bookkeeping (tensors made inside cannot
      enter autograd later, so results are copied into tensors made outside).
    - Every module's parameters and submodules are mirrored into its instance ``__dict__``, so
      that ``self.weight`` is a plain attribute lookup instead of a call of
      ``nn.Module.__getattr__`` (about 0.3 us; a batch-1 step makes some 70 of them, about 20%
      of a CPU step). The mirrors are removed on exit; nothing re-registers a parameter meanwhile.
      Overlapping generations in several threads stay correct: a mirror holds the registered
      object itself, and a lookup without one falls back to ``__getattr__``.
    - On CPU, oneDNN is switched off: its GELU costs about 8 us a call whatever the size,
      PyTorch's own 1 us on one sample's activations (``_onednn_off``).
    - The step caches check the parameters once, not every step (``parameters_fixed``)."""
    mirrored = []
    for module in model.modules():
        for name, value in (*module._parameters.items(), *module._modules.items()):
            if value is not None and name not in module.__dict__:
                module.__dict__[name] = value
                mirrored.append((module, name))
    try:
        cpu_only = _onednn_off() if device.type == "cpu" else contextlib.nullcontext()
        with torch.inference_mode(), parameters_fixed(), cpu_only:
            yield
    finally:
        for module, name in mirrored:
            module.__dict__.pop(name, None)  # (a generation in another thread may have removed it first)


_onednn_users = 0  # CPU generations running now, in any thread
_onednn_lock = threading.Lock()
_onednn_before = True


@contextlib.contextmanager
def _onednn_off():
    """oneDNN off while any CPU generation runs. The switch is process-wide, so the first
    generation to start turns it off and the last to end restores it: generations overlapping in
    threads leave it as they found it."""
    global _onednn_users, _onednn_before
    with _onednn_lock:
        if _onednn_users == 0:
            _onednn_before = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _onednn_users += 1
    try:
        yield
    finally:
        with _onednn_lock:
            _onednn_users -= 1
            if _onednn_users == 0:
                torch.backends.mkldnn.enabled = _onednn_before


def _zero_state(state) -> None:
    if torch.is_tensor(state):
        state.zero_()
    elif isinstance(state, (list, tuple)):
        for item in state:
            _zero_state(item)
    elif isinstance(state, dict):
        for key, item in state.items():
            if key == "t":
                state[key] = 0
            else:
                _zero_state(item)


def state_bytes(model: WaveformLM, batch: int) -> int:
    """Bytes of the recurrent state for ``batch`` clips."""
    def size(obj) -> int:
        if torch.is_tensor(obj):
            return obj.numel() * obj.element_size()
        if isinstance(obj, (list, tuple)):
            return sum(size(o) for o in obj)
        if isinstance(obj, dict):
            return sum(size(o) for o in obj.values())
        return 0

    return size(model.initial_state(1, device="meta")) * batch


def check_memory(model: WaveformLM, n: int, length: int, batch_size: int, device: torch.device) -> None:
    """Refuse, with a clear message, a request that would not fit in the device's free memory."""
    noise = model.backbone.stride * batch_size * 256 * 4
    need = n * length * 5 + state_bytes(model, batch_size) * 3 + batch_size * 256 * 4 * 8 + noise
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.8 * free:
        raise MemoryError(f"generating {n} clips of {length} samples at batch {batch_size} needs about "
                          f"{need / 2**30:.1f} GiB, but only {free / 2**30:.1f} GiB is free on {device}; "
                          f"lower --n, --seconds or --batch-size")


@torch.no_grad()
def generate(model: WaveformLM, n: int, length: int, *, batch_size: int = 16, temperature: float = 1.0,
             top_p: float = 1.0, seed: int = 0, label: int | None | list[int | None] = None, guidance: float = 1.0,
             prefix: torch.Tensor | None = None, sample_rate: int = 16000, progress: bool = False,
             should_stop=None, cuda_graphs: bool = True, on_progress=None) -> Generation:
    """Generate ``n`` clips of ``length`` samples.

    label: class index for a conditional model (None = unconditional / "no label"), for every
    clip, or a list of n of them, one per clip.
    guidance: classifier-free guidance weight w (needs a label; 1 = none, see the module docstring).
    prefix: (P,) tokens that every clip starts with (teacher-forced, returned unchanged).
    sample_rate: only for the real-time factor the progress bar shows.
    cuda_graphs: on CUDA, replay each step from captured graphs (see SampleLoop).
    on_progress: optional callable(samples generated, samples in total, seconds so far), called
    every 256 samples.
    should_stop: optional callable; when it returns True generation ends early, and the clips
    are cut to the samples made so far.
    """
    device = next(model.parameters()).device
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
    clip_labels = list(label) if isinstance(label, (list, tuple)) else [label] * n
    if len(clip_labels) != n:
        raise ValueError(f"{len(clip_labels)} labels for {n} clips")
    guided = guidance != 1.0
    if guided and None in clip_labels:
        raise ValueError("classifier-free guidance needs a label for every clip (and a class-conditional model)")
    if prefix is not None and len(prefix) > length:
        raise ValueError(f"the prefix ({len(prefix)} samples) is longer than the clip ({length})")
    check_memory(model, n, length, min(batch_size, n) * (2 if guided else 1), device)
    if prefix is not None:
        prefix = prefix.to(device).long() if len(prefix) else None  # once, not a copy per sample
    model.eval()
    tokens = torch.empty(n, length, dtype=torch.uint8)
    loglik = torch.zeros(n, dtype=torch.float64)
    problems: dict[int, str] = {}
    seeds, made = [], length
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n * length, unit="sample", unit_scale=True, dynamic_ncols=True)
    started = time.time()
    with _lean_ops(model, device):
        for batch_index, start in enumerate(range(0, n, batch_size)):
            rows = min(batch_size, n - start)
            batch_seed = seed + batch_index
            seeds += [batch_seed] * rows
            generator = torch.Generator(device).manual_seed(batch_seed)
            labels = None
            batch_labels = clip_labels[start:start + rows]
            if any(c is not None for c in batch_labels):
                labels = torch.tensor([model.cfg.n_classes if c is None else c for c in batch_labels],
                                      dtype=torch.long, device=device)
            if guided:  # the same clips twice: conditioned, then with "no label"
                labels = torch.cat([labels, torch.full_like(labels, model.cfg.n_classes)])
            model.check_labels(labels)
            loop = SampleLoop(model, labels, rows, length, temperature=temperature, top_p=top_p, guidance=guidance,
                              prefix=prefix, generator=generator, device=device)
            if cuda_graphs and device.type == "cuda":
                loop.capture()
            for t in range(length):  # no host synchronisation inside this loop
                if t % loop.stride == 0:
                    loop.draw_noise()
                loop.step(t % loop.stride)
                if t % 256 == 255 or t == length - 1:
                    if bar is not None:
                        bar.update(rows * (t % 256 + 1))
                        bar.set_postfix(real_time=f"{bar.n / max(time.time() - started, 1e-9) / sample_rate:.3f}x")
                    if on_progress is not None:
                        on_progress(start * length + rows * (t + 1), n * length, time.time() - started)
                if should_stop is not None and should_stop():
                    made = min(made, t + 1)
                    break
            for r, t in enumerate(loop.failed_at.tolist()):
                if t >= 0:
                    problems[start + r] = f"non-finite logits at sample {t}; the rest of the clip is silence"
                    print(f"audiomamba: clip {start + r}: {problems[start + r]}", file=sys.stderr)
            tokens[start:start + rows] = loop.tokens.cpu()
            loglik[start:start + rows] = (loop.loglik / math.log(2)).cpu()
            if made < length:
                n = start + rows
                break
    if bar is not None:
        bar.close()
    return Generation(tokens[:n, :made], loglik[:n].float(),
                      clip_labels[:n], seeds[:n], {k: v for k, v in problems.items() if k < n})


def write_samples(gen: Generation, out_dir: str | Path, sample_rate: int, label_names: list[str] | None = None) -> list[dict]:
    """Write WAVs ordered by log-likelihood (lowest first, as SaShiMi does) and samples.json."""
    from audiomamba.data.audio import write_wav

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    length = gen.tokens.shape[1]
    order = torch.argsort(gen.loglik_bits).tolist()
    records = []
    for rank, i in enumerate(order):
        name = f"sample_{rank:05d}.wav"
        write_wav(out_dir / name, mulaw_decode(gen.tokens[i]), sample_rate)
        label = gen.labels[i]
        records.append({
            "file": name,
            "loglik_bits": float(gen.loglik_bits[i]),
            "bits_per_sample": float(-gen.loglik_bits[i] / length),
            "label": label,
            "label_name": label_names[label] if label is not None and label_names else None,
            "seed": gen.seeds[i],
            "problem": gen.problems.get(i),
        })
    payload = {"sample_rate": sample_rate, "length": length, "samples": records}
    tmp = out_dir / "samples.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out_dir / "samples.json")
    return records

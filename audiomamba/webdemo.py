"""The Gradio web demo: generate speech in the browser from a checkpoint.

``build_demo(models)`` builds the page from already-loaded models (tests pass a tiny one);
``audiomamba demo`` and ``demo/app.py`` load a checkpoint and launch it. Gradio is an optional
dependency (the ``demo`` extra) and is imported only here.

Each clip is written as a 16-bit WAV (Gradio would peak-normalise numpy audio) with a
spectrogram PNG, the classifier's label and confidence, and the model's log-likelihood.
Generation runs in a worker thread so that the page shows progress and a Stop button can end it
early, keeping what was made.
"""
from __future__ import annotations

import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from audiomamba.data.audio import AudioFileError, read_clip, resample, write_wav
from audiomamba.data.mulaw import mulaw_decode, mulaw_encode
from audiomamba.eval.evaluate import write_png
from audiomamba.models.lm import WaveformLM
from audiomamba.sample import generate

MAX_CLIPS = 8
MAX_SECONDS = 4.0
MAX_PREFIX_SECONDS = 60.0


@dataclass
class DemoModels:
    """What the page needs: the generator, its sample rate and labels, an optional classifier."""

    model: WaveformLM
    sample_rate: int
    label_names: list[str]
    about: str = ""  # Markdown for the "About" panel
    classifier: torch.nn.Module | None = None  # audiomamba.eval.classifier.SpeechClassifier
    stop: threading.Event = field(default_factory=threading.Event)


def load_models(checkpoint: str | Path, classifier: str | Path | None = None, device="cpu") -> DemoModels:
    """Load a generator checkpoint (and a classifier) and describe them for the About panel."""
    from audiomamba.checkpoint import load_model, resolve_checkpoint
    from audiomamba.cli import label_names_of

    model, recipe, config = load_model(checkpoint, device)
    n_params = sum(p.numel() for p in model.parameters())
    lines = [f"**Checkpoint:** `{resolve_checkpoint(checkpoint)}` (step {config['step']})",
             f"**Training data:** `{recipe.data.root}` ({recipe.data.dataset}, {recipe.data.sample_rate} Hz)",
             f"**Model:** {n_params / 1e6:.2f}M parameters; outer stages {recipe.model.outer}, "
             f"center {recipe.model.center}"]
    for key, value in (config.get("metrics") or {}).items():
        lines.append(f"**{key}:** {value}")
    clf = None
    if classifier:
        from audiomamba.eval.classifier import load_classifier

        clf, meta = load_classifier(classifier, device)
        lines.append(f"**Classifier:** `{classifier}`, test accuracy {meta.get('test_accuracy', float('nan')):.1%}")
    return DemoModels(model, recipe.data.sample_rate, label_names_of(config), "\n\n".join(lines), clf)


def spectrogram_image(audio: torch.Tensor, sample_rate: int, height: int = 128) -> np.ndarray:
    """A log-magnitude STFT of (time,) audio as a uint8 image, low frequencies at the bottom."""
    n_fft = 2 ** math.ceil(math.log2(0.032 * sample_rate))
    spec = torch.stft(audio.float(), n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                      return_complex=True).abs()
    db = 20 * torch.log10(spec + 1e-5)
    db = ((db - (db.max() - 80)) / 80).clamp(0, 1)  # an 80 dB range below the loudest bin
    image = (db.flip(0) * 255).to(torch.uint8).numpy()
    rows = np.linspace(0, image.shape[0] - 1, height).astype(int)
    return np.repeat(image[rows], 2, axis=1)


def _number(value, name: str, low: float, high: float) -> float:
    """A control's value clamped to its range; a non-number is refused with a message."""
    import gradio as gr

    try:
        value = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise gr.Error(f"{name} must be finite")
    return min(max(value, low), high)


def _prefix_tokens(path: str | None, sample_rate: int) -> torch.Tensor | None:
    """An uploaded or recorded prefix as mu-law tokens (mono, resampled), or a clear error."""
    import gradio as gr

    if not path:
        return None
    try:
        audio = read_clip(path, sample_rate)
    except AudioFileError as err:
        raise gr.Error(f"The prefix is not usable audio: {err}") from None
    if len(audio) > MAX_PREFIX_SECONDS * sample_rate:
        raise gr.Error(f"The prefix is {len(audio) / sample_rate:.0f} s long; upload at most "
                       f"{MAX_PREFIX_SECONDS:.0f} s")
    return mulaw_encode(audio)


def run_generation(models: DemoModels, n, seed, temperature, top_p, seconds, label, prefix_path, guidance,
                   out_dir: Path):
    """Generator of (status, per-clip outputs or None): progress while sampling, then the clips."""
    n = int(_number(n, "Number of clips", 1, MAX_CLIPS))
    seed = int(_number(seed, "Seed", 0, 2**31 - 1))
    temperature = _number(temperature, "Temperature", 0.0, 2.0)
    top_p = _number(top_p, "Top-p", 0.01, 1.0)
    seconds = _number(seconds, "Length", 0.05, MAX_SECONDS)
    guidance = _number(guidance, "Guidance", 1.0, 5.0)
    rate = models.sample_rate
    prefix = _prefix_tokens(prefix_path, rate)
    length = max(round(seconds * rate), len(prefix) if prefix is not None else 0)
    label_index = None if label in (None, "", "any") else models.label_names.index(label)
    if label_index is None:
        guidance = 1.0  # guidance steers towards a word; without one there is nothing to steer to
    models.stop.clear()
    progress = {"done": 0, "total": n * length, "seconds": 0.0}
    result: dict = {}

    def work():
        try:
            result["gen"] = generate(models.model, n, length, batch_size=n, temperature=temperature, top_p=top_p,
                                     seed=seed, label=label_index, guidance=guidance, prefix=prefix, sample_rate=rate,
                                     should_stop=models.stop.is_set,
                                     on_progress=lambda done, total, secs: progress.update(done=done, seconds=secs))
        except Exception as err:  # reported on the page, not as a traceback
            result["error"] = err

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
        rtf = progress["done"] / max(progress["seconds"], 1e-9) / rate
        yield f"Generating: {progress['done']:,} / {progress['total']:,} samples ({rtf:.3f}x real time)", None
    if "error" in result:
        import gradio as gr

        raise gr.Error(f"Generation failed: {result['error']}")
    gen = result["gen"]
    folder = Path(tempfile.mkdtemp(prefix="clips_", dir=out_dir))
    clips = []
    for i in range(len(gen.tokens)):
        audio = mulaw_decode(gen.tokens[i])
        wav, png = folder / f"clip_{i + 1}.wav", folder / f"clip_{i + 1}.png"
        write_wav(wav, audio, rate)
        write_png(png, spectrogram_image(audio, rate))
        made = gen.tokens.shape[1]
        info = [f"**Clip {i + 1}**: {made / rate:.2f} s, negative log-likelihood {-gen.loglik_bits[i].item() / made:.3f} "
                f"bits per sample"]
        if models.classifier is not None:
            info.append(_classify(models, audio))
        if i in gen.problems:
            info.append(f"Stopped early: {gen.problems[i]}")
        clips.append((str(wav), str(png), "  \n".join(info)))
    stopped = " (stopped early; kept what was made)" if gen.tokens.shape[1] < length else ""
    yield f"Done: {len(clips)} clip(s){stopped}.", clips


def _classify(models: DemoModels, audio: torch.Tensor) -> str:
    from audiomamba.data.audio import fit_length
    from audiomamba.eval.classifier import predict

    cfg = models.classifier.cfg
    clip = fit_length(resample(audio, models.sample_rate, cfg.sample_rate), cfg.clip_samples)
    probs, _ = predict(models.classifier, clip[None])
    return f"Classifier hears **{cfg.labels[int(probs.argmax())]}** ({float(probs.max()):.0%})"


def build_demo(models: DemoModels, out_dir: str | Path | None = None):
    """The page as a ``gr.Blocks`` (queued: one generation at a time, others wait)."""
    import gradio as gr

    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="audiomamba_demo_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = ["any", *models.label_names] if models.label_names else ["any"]
    with gr.Blocks(title="audiomamba") as demo:
        gr.Markdown("# audiomamba\nSpeech generated one sample at a time by a state-space model.")
        with gr.Row():
            with gr.Column():
                n = gr.Slider(1, MAX_CLIPS, value=2, step=1, label="Number of clips")
                label = gr.Dropdown(labels, value=(models.label_names or ["any"])[0],  # a word, guided
                                    label="Word to say ('any' = unconditional)")
                seconds = gr.Slider(0.05, MAX_SECONDS, value=1.0, step=0.05, label="Length (seconds)")
                temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature")
                top_p = gr.Slider(0.01, 1.0, value=1.0, step=0.01, label="Top-p")
                seed = gr.Number(value=0, precision=0, label="Seed")
                prefix = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Prefix to continue (optional)")
                guidance = gr.Slider(1.0, 5.0, value=3.0, step=0.5,
                                     label="Guidance (with a word; 1 = none, more = clearer word, less variety)")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary")
                    stop = gr.Button("Stop")
            with gr.Column():
                status = gr.Markdown("Ready.")
                slots = []
                for i in range(MAX_CLIPS):
                    with gr.Group(visible=False) as group:
                        audio = gr.Audio(type="filepath", label=f"Clip {i + 1}", interactive=False)
                        image = gr.Image(type="filepath", label="Spectrogram", interactive=False)
                        info = gr.Markdown()
                    slots.append((group, audio, image, info))
        with gr.Accordion("About", open=False):
            gr.Markdown(models.about or "No model information.")

        outputs = [status] + [c for slot in slots for c in slot]

        def on_generate(n, seed, temperature, top_p, seconds, label, prefix, guidance):
            for message, clips in run_generation(models, n, seed, temperature, top_p, seconds, label, prefix, guidance,
                                                 out_dir):
                if clips is None:
                    yield [message] + [gr.skip()] * (4 * MAX_CLIPS)
                    continue
                values = [message]
                for i in range(MAX_CLIPS):
                    if i < len(clips):
                        wav, png, text = clips[i]
                        values += [gr.Group(visible=True), wav, png, text]
                    else:
                        values += [gr.Group(visible=False), None, None, ""]
                yield values

        def on_stop():
            models.stop.set()
            return "Stopping: keeping what was made so far."

        go.click(on_generate, [n, seed, temperature, top_p, seconds, label, prefix, guidance], outputs, api_name="generate")
        stop.click(on_stop, None, status, api_name="stop", queue=False)
    demo.queue(default_concurrency_limit=1, max_size=16)
    return demo

"""The ``audiomamba`` command line: small verbs over the library.

    audiomamba train RECIPE [--resume] [section.key=value ...]
    audiomamba sample CHECKPOINT [--n 8 --seconds 1 --label yes --prefix a.wav --out DIR ...]
    audiomamba nll CHECKPOINT [--data PATH] [--split test]
    audiomamba export CHECKPOINT --out DIR [--dtype bf16]
    audiomamba model-info RECIPE [section.key=value ...]
    audiomamba data pack RECIPE --out DIR [--splits train validation test]
    audiomamba classifier train --data PATH --dataset speech_commands --out DIR
    audiomamba classifier predict --classifier DIR WAV ...
    audiomamba eval --samples DIR --classifier DIR --data PATH
    audiomamba demo --checkpoint CKPT [--classifier DIR] [--port 7860]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from audiomamba.pretrained import CLASSIFIER_WORDS, WORDS_16K, classifier_for


def _split_overrides(extra: list[str]) -> list[str]:
    bad = [a for a in extra if "=" not in a or "." not in a.split("=", 1)[0]]
    if bad:
        raise SystemExit(f"audiomamba: unrecognised arguments {bad}; overrides look like train.max_steps=100")
    return [a.lstrip("-") for a in extra]


def cmd_train(args, extra) -> None:
    from audiomamba.config import load_recipe
    from audiomamba.train import train

    recipe = load_recipe(args.recipe, _split_overrides(extra))
    ckpt = train(recipe, resume=args.resume, progress=not args.quiet)
    print(f"checkpoint: {ckpt}")


def _label_indices(labels: str | None, names: list[str], n_classes: int) -> list[int | None]:
    """--label's value: one label, several separated by commas, or "all" (every label)."""
    if labels == "all":
        if not n_classes:
            raise SystemExit("audiomamba: this model is unconditional; drop --label")
        return list(range(n_classes))
    return [_label_index(label, names, n_classes) for label in (labels or "any").split(",")]


def _label_index(label: str | None, names: list[str], n_classes: int) -> int | None:
    if label is None or label == "any":
        return None
    if not n_classes:
        raise SystemExit("audiomamba: this model is unconditional; drop --label")
    if label in names:
        return names.index(label)
    if label.isdigit() and int(label) < n_classes:
        return int(label)
    raise SystemExit(f"audiomamba: unknown label {label!r}; this model knows {names}")


def label_names_of(config: dict) -> list[str]:
    """Label names a checkpoint was trained with (saved by training), else numbers."""
    names = config.get("label_names")
    n = config["recipe"]["model"]["n_classes"]
    return names if names else [str(i) for i in range(n)]


def cmd_sample(args, extra) -> None:
    import torch

    from audiomamba.checkpoint import load_model
    from audiomamba.data.audio import read_clip
    from audiomamba.data.mulaw import mulaw_encode
    from audiomamba.sample import generate, write_samples
    from audiomamba.train import pick_device

    device = pick_device(args.device)
    model, recipe, config = load_model(args.checkpoint, device)
    names = label_names_of(config)
    rate = recipe.data.sample_rate
    length = round(args.seconds * rate)
    if length < 1 or args.n < 1:
        raise SystemExit("audiomamba: --seconds and --n must be positive")
    prefix = None
    if args.prefix:
        prefix = mulaw_encode(read_clip(args.prefix, rate))
        length = max(length, len(prefix))
    torch.manual_seed(args.seed)
    labels = [index for index in _label_indices(args.label, names, recipe.model.n_classes) for _ in range(args.n)]
    gen = generate(model, len(labels), length, batch_size=args.batch_size, temperature=args.temperature,
                   top_p=args.top_p, seed=args.seed, label=labels, guidance=args.guidance, prefix=prefix,
                   sample_rate=rate, progress=not args.quiet)
    records = write_samples(gen, args.out, rate, names)
    print(f"wrote {len(records)} clips to {args.out} (samples.json has their log-likelihoods)")


def cmd_nll(args, extra) -> None:
    from contextlib import nullcontext

    from audiomamba.checkpoint import load_model
    from audiomamba.data.clipset import ClipSet, load_split
    from audiomamba.train import evaluate_nll, pick_device

    device = pick_device(args.device)
    model, recipe, config = load_model(args.checkpoint, device)
    if args.wavs:
        label = _label_index(args.label, label_names_of(config), recipe.model.n_classes)
        clips = _clips_from_wavs(args.wavs, recipe, label)
    else:
        data = recipe.data
        if args.data:
            data.root, data.packed_dir = args.data, None
        clips: ClipSet = load_split(data, args.split, progress=not args.quiet)
    bits = evaluate_nll(model, clips, args.batch_size, device, nullcontext(), progress=not args.quiet)
    print(json.dumps({"split": None if args.wavs else args.split, "clips": len(clips), "nll_bits_per_sample": bits}))


def _clips_from_wavs(paths: list[str], recipe, label: int | None):
    """WAV files as a ClipSet at the recipe's rate and full length, all with one label (None: no label)."""
    import torch

    from audiomamba.data.audio import read_clip
    from audiomamba.data.clipset import ClipSet
    from audiomamba.data.mulaw import mulaw_encode

    audio = [read_clip(p, recipe.data.sample_rate) for p in paths]
    if len({len(a) for a in audio}) > 1:
        raise SystemExit("audiomamba: nll --wavs needs clips of one length (pass them in groups)")
    labels = torch.full((len(audio),), recipe.model.n_classes if label is None else label, dtype=torch.long)
    return ClipSet(torch.stack([mulaw_encode(a) for a in audio]), labels, [""] * len(audio), [],
                   recipe.data.sample_rate, [])


def cmd_export(args, extra) -> None:
    from audiomamba.checkpoint import export_checkpoint

    try:
        source, weights = export_checkpoint(args.checkpoint, args.out, args.dtype)
    except FileExistsError as err:
        raise SystemExit(f"audiomamba: {err}") from None
    megabytes = sum(t.numel() * t.element_size() for t in weights.values()) / 1e6
    print(f"wrote {args.out}: {sum(t.numel() for t in weights.values()):,} weights in {args.dtype} "
          f"({megabytes:.1f} MB), from {source}")


def cmd_model_info(args, extra) -> None:
    from audiomamba.config import load_recipe
    from audiomamba.models.lm import WaveformLM

    recipe = load_recipe(args.recipe, _split_overrides(extra))
    model = WaveformLM(recipe.model)
    backbone = model.backbone
    per_stage: dict[str, int] = defaultdict(int)
    per_type: dict[str, int] = defaultdict(int)

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    for i, width in enumerate(backbone.widths[:-1]):
        for path, blocks in (("down", backbone.down[i]), ("up", backbone.up[i])):
            for block in blocks:
                per_stage[f"stage {i} {path} (width {width})"] += count(block)
                per_type[type(block.block).__name__] += count(block)
        per_stage[f"pooling {i}<->{i + 1}"] += count(backbone.down_pool[i]) + count(backbone.up_pool[i])
    for block in backbone.center:
        per_stage[f"center (width {backbone.widths[-1]})"] += count(block)
        per_type[type(block.block).__name__] += count(block)
    per_stage["embeddings, norm, head"] = count(model) - count(backbone)
    total = count(model)
    print(f"{args.recipe}: {total:,} parameters ({total / 1e6:.2f}M)")
    for title, table in (("per stage", per_stage), ("per block type", per_type)):
        print(f"\n{title}:")
        for key, value in table.items():
            print(f"  {key:<32} {value:>12,}  {100 * value / total:5.1f}%")


def cmd_data_pack(args, extra) -> None:
    from audiomamba.config import load_recipe
    from audiomamba.data.clipset import read_split, save_packed

    recipe = load_recipe(args.recipe, _split_overrides(extra))
    if args.root:
        recipe.data.root = args.root
    recipe.data.skip_bad = recipe.data.skip_bad or args.skip_bad
    for split in args.splits:
        clips = read_split(recipe.data, split, progress=not args.quiet)
        path = Path(args.out) / f"{split}.safetensors"
        save_packed(clips, path)
        skipped = f", skipped {len(clips.skipped)} unreadable file(s)" if clips.skipped else ""
        print(f"{split}: {len(clips)} clips -> {path} ({path.stat().st_size / 1e6:.1f} MB){skipped}")


def _classifier_data(args):
    from audiomamba.config import DataConfig

    rate = args.sample_rate or (8000 if args.dataset == "fsdd" else 16000)
    return DataConfig(dataset=args.dataset, root=args.data, words=args.words, sample_rate=rate,
                      clip_samples=round(rate * args.seconds), split_salt=args.split_salt,
                      packed_dir=args.packed)


def cmd_classifier_train(args, extra) -> None:
    from audiomamba.data.clipset import load_split
    from audiomamba.data.mulaw import mulaw_decode
    from audiomamba.eval.classifier import ClassifierConfig, accuracy, save_classifier, train_classifier
    from audiomamba.train import pick_device

    data = _classifier_data(args)
    device = pick_device(args.device)
    splits = {split: load_split(data, split) for split in ("train", "validation", "test")}
    (train_audio, train_labels), (val_audio, val_labels), (test_audio, test_labels) = (
        (mulaw_decode(clips.tokens), clips.labels) for clips in splits.values())
    labels = splits["test"].label_names
    if args.limit:  # a seeded random subset: files are sorted by label
        import torch

        keep = torch.randperm(len(train_audio), generator=torch.Generator().manual_seed(0))[:args.limit]
        train_audio, train_labels = train_audio[keep], train_labels[keep]
    cfg = ClassifierConfig(sample_rate=data.sample_rate, clip_samples=data.clip_samples, labels=labels, width=args.width,
                           n_mels=args.n_mels, freq_masks=args.spec_masks, time_masks=args.spec_masks,
                           utterance_norm=args.utterance_norm)
    model, log = train_classifier(cfg, train_audio, train_labels, val_audio, val_labels, epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr, mixup=args.mixup, speed_change=args.speed_change,
                                  device=device, seed=args.seed, progress=not args.quiet)
    result = {"validation_accuracy": accuracy(model, val_audio, val_labels),
              "test_accuracy": accuracy(model, test_audio, test_labels),
              "train_clips": len(train_audio), "data": data.root, "dataset": data.dataset,
              "split_salt": data.split_salt, "epochs": args.epochs, "mixup": args.mixup,
              "speed_change": args.speed_change}
    save_classifier(model, args.out, {**result, "log": log})
    print(json.dumps(result))


def cmd_classifier_predict(args, extra) -> None:
    import torch

    from audiomamba.data.audio import read_clip
    from audiomamba.eval.classifier import load_classifier, predict
    from audiomamba.train import pick_device

    model, _ = load_classifier(args.classifier, pick_device(args.device))
    cfg = model.cfg
    audio = torch.stack([read_clip(path, cfg.sample_rate, cfg.clip_samples) for path in args.wavs])
    probs, _ = predict(model, audio)
    for path, p in zip(args.wavs, probs):
        print(f"{path}\t{cfg.labels[int(p.argmax())]}\t{float(p.max()):.3f}")


def cmd_eval(args, extra) -> None:
    from audiomamba.eval.classifier import load_classifier
    from audiomamba.eval.evaluate import evaluate, markdown_table, spectrogram_sheet, write_png
    from audiomamba.train import pick_device

    model, meta = load_classifier(args.classifier, pick_device(args.device))
    args.data = args.data or meta.get("data")
    if not args.data:
        raise SystemExit(f"{args.classifier} does not say which data it was trained on: give --data")
    args.dataset = args.dataset or meta.get("dataset", "speech_commands")
    args.split_salt = meta.get("split_salt", "") if args.split_salt is None else args.split_salt
    args.sample_rate, args.seconds = model.cfg.sample_rate, model.cfg.clip_samples / model.cfg.sample_rate
    args.words = args.words or (model.cfg.labels if args.dataset == "speech_commands" else None)
    report, audio = evaluate(args.samples, model, _classifier_data(args), ndb_bins=args.ndb_bins, seed=args.seed)
    table = markdown_table(report)
    print(table)
    out = Path(args.out or args.samples)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    (out / "eval.md").write_text(table + "\n")
    write_png(out / "spectrograms.png", spectrogram_sheet(model, audio, report["predicted"]))
    print(f"\nwrote {out / 'eval.json'}, {out / 'eval.md'} and {out / 'spectrograms.png'}")


def cmd_demo(args, extra) -> None:
    from audiomamba.train import pick_device
    from audiomamba.webdemo import build_demo, load_models

    if args.classifier is None and classifier_for(args.checkpoint):
        args.classifier = str(classifier_for(args.checkpoint))
    models = load_models(args.checkpoint, args.classifier, pick_device(args.device))
    build_demo(models).launch(server_name=args.host, server_port=args.port, show_error=True)


def _add_data_arguments(p, from_classifier: bool) -> None:
    """--data and its layout options; for ``eval`` the layout defaults come from the classifier."""
    p.add_argument("--data", required=not from_classifier,
                   help="dataset root (Speech Commands layout or FSDD)" + (", default: the classifier's" if from_classifier else ""))
    p.add_argument("--dataset", choices=["speech_commands", "fsdd"], default=None if from_classifier else "speech_commands")
    p.add_argument("--words", nargs="+", help="speech_commands: word folders (default: all)")
    p.add_argument("--split-salt", default=None if from_classifier else "",
                   help="re-split speakers with a salted hash (see README, Data)")
    p.add_argument("--packed", help="read <split>.safetensors made by `audiomamba data pack` instead of WAVs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audiomamba", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("train", help="train a recipe (overrides: section.key=value)")
    p.add_argument("recipe")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_train)

    p = verbs.add_parser("sample", help="generate clips from a checkpoint")
    p.add_argument("checkpoint", nargs="?", default=str(WORDS_16K),
                   help="a checkpoint directory or a run directory (its latest checkpoint); default: the shipped words model")
    p.add_argument("--n", type=int, default=8, help="clips (per label, when --label names several)")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", help="word/digit to say (conditional models), several as yes,no,up, or 'all'; "
                                   "--n clips each; 'any' = unconditional")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance weight with --label (1 = none; larger = more like the word)")
    p.add_argument("--prefix", help="a WAV to continue")
    p.add_argument("--out", default="samples")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_sample)

    p = verbs.add_parser("nll", help="negative log-likelihood in bits per sample")
    p.add_argument("checkpoint", nargs="?", default=str(WORDS_16K), help="default: the shipped words model")
    p.add_argument("--data", help="dataset root (default: the one the model was trained on)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--wavs", nargs="+", help="score these WAV files instead of a split")
    p.add_argument("--label", help="with --wavs on a conditional model: the label they were made with")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_nll)

    p = verbs.add_parser("export", help="a checkpoint's weights in bf16 with its config, as the shipped models are")
    p.add_argument("checkpoint", help="a checkpoint directory or a run directory (its latest checkpoint)")
    p.add_argument("--out", required=True, help="the directory to write (model.safetensors, config.json)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"],
                   help="bf16 (default): half the size, and faster generation on GPU")
    p.set_defaults(fn=cmd_export)

    p = verbs.add_parser("model-info", help="parameters per stage and block type")
    p.add_argument("recipe")
    p.set_defaults(fn=cmd_model_info)

    p = verbs.add_parser("data", help="data utilities")
    data_verbs = p.add_subparsers(dest="data_verb", required=True)
    q = data_verbs.add_parser("pack", help="pack splits into uint8 mu-law safetensors files")
    q.add_argument("recipe")
    q.add_argument("--out", required=True)
    q.add_argument("--root", help="dataset root (default: the recipe's)")
    q.add_argument("--splits", nargs="+", default=["train", "validation", "test"])
    q.add_argument("--skip-bad", action="store_true", help="skip and count unreadable files")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(fn=cmd_data_pack)

    p = verbs.add_parser("classifier", help="the speech classifier behind the metrics")
    classifier_verbs = p.add_subparsers(dest="classifier_verb", required=True)
    q = classifier_verbs.add_parser("train", help="train on real clips; saves safetensors + JSON")
    _add_data_arguments(q, from_classifier=False)
    q.add_argument("--sample-rate", type=int, help="default: 16000 (speech_commands) or 8000 (fsdd)")
    q.add_argument("--seconds", type=float, default=1.0, help="clip length")
    q.add_argument("--epochs", type=int, default=30)
    q.add_argument("--width", type=int, default=32, help="channels of the first stage (x2 per stage)")
    q.add_argument("--n-mels", type=int, default=40, help="mel bands of the log-mel input")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--lr", type=float, default=3e-3)
    q.add_argument("--spec-masks", type=int, default=2, help="SpecAugment: frequency bands and time spans masked per clip")
    q.add_argument("--utterance-norm", action="store_true",
                   help="subtract each clip's mean log-mel per band (cepstral mean normalisation)")
    q.add_argument("--mixup", type=float, default=0.0, help="mixup Beta parameter (0: off; 0.2 is usual)")
    q.add_argument("--speed-change", type=float, default=0.1,
                   help="speed perturbation: each training clip plays at a random 1 +- this (pitch and tempo together)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--limit", type=int, help="use N random training clips")
    q.add_argument("--out", required=True)
    q.add_argument("--device", default="auto")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(fn=cmd_classifier_train)
    q = classifier_verbs.add_parser("predict", help="label and confidence per file")
    q.add_argument("--classifier", required=True)
    q.add_argument("wavs", nargs="+")
    q.add_argument("--device", default="auto")
    q.set_defaults(fn=cmd_classifier_predict)

    p = verbs.add_parser("eval", help="FID, IS, mIS, AM, NDB of a folder of clips")
    p.add_argument("--samples", required=True, help="folder of WAVs (samples.json there enables thresholds)")
    p.add_argument("--classifier", default=str(CLASSIFIER_WORDS), help="default: the shipped words classifier")
    _add_data_arguments(p, from_classifier=True)
    p.add_argument("--ndb-bins", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="where eval.json, eval.md, spectrograms.png go (default: the samples folder)")
    p.add_argument("--device", default="auto")
    p.set_defaults(fn=cmd_eval)

    p = verbs.add_parser("demo", help="the Gradio web demo (needs the 'demo' extra)")
    p.add_argument("--checkpoint", default=str(WORDS_16K), help="generator checkpoint or run directory "
                   "(default: the shipped words model; audiomamba/pretrained/fsdd_8k is the shipped digits model)")
    p.add_argument("--classifier", help="classifier directory, to label each clip (default: a shipped model's "
                   "own classifier)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--device", default="auto")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        args.fn(args, extra)
    except (FileNotFoundError, ValueError, MemoryError) as err:
        print(f"audiomamba: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

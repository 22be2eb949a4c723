"""The classifier trains on real data on CPU, and `eval` runs end to end on real WAVs."""
import json
import shutil

import pytest

from audiomamba.cli import main
from audiomamba.eval.evaluate import write_png


@pytest.fixture(scope="module")
def fsdd_classifier(tmp_path_factory):
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("no ../shared/data")
    out = tmp_path_factory.mktemp("clf")
    main(["classifier", "train", "--data", str(SHARED_DATA / "fsdd"), "--dataset", "fsdd", "--epochs", "10",
          "--batch-size", "32", "--limit", "400", "--spec-masks", "0", "--n-mels", "32", "--out", str(out), "--quiet", "--device", "cpu"])
    return out


def test_classifier_trained_briefly_on_cpu_beats_chance_by_a_wide_margin(fsdd_classifier):
    meta = json.loads((fsdd_classifier / "classifier.json").read_text())
    assert meta["test_accuracy"] > 0.3  # chance is 0.1 for ten digits
    assert meta["config"]["sample_rate"] == 8000 and meta["config"]["labels"] == [str(d) for d in range(10)]
    assert meta["config"]["n_mels"] == 32


def test_classifier_predict_prints_label_and_confidence(fsdd_classifier, shared_data, capsys):
    wav = shared_data / "fsdd" / "recordings" / "3_theo_0.wav"
    main(["classifier", "predict", "--classifier", str(fsdd_classifier), str(wav), "--device", "cpu"])
    path, label, confidence = capsys.readouterr().out.strip().split("\t")
    assert path == str(wav) and label in [str(d) for d in range(10)] and 0 < float(confidence) <= 1


def test_eval_of_real_clips_lands_near_the_real_test_row_and_names_bad_files(fsdd_classifier, shared_data, tmp_path,
                                                                            capsys):
    samples = tmp_path / "samples"
    samples.mkdir()
    recordings = sorted((shared_data / "fsdd" / "recordings").glob("*_[0-4].wav"))  # the real test split
    for path in recordings[::2]:
        shutil.copy(path, samples / path.name)
    (samples / "broken.wav").write_bytes(b"not audio")
    (samples / "notes.txt").write_text("ignored")
    main(["eval", "--samples", str(samples), "--classifier", str(fsdd_classifier),
          "--data", str(shared_data / "fsdd"), "--ndb-bins", "10", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "| real test split |" in out and "| samples |" in out and "broken.wav" in out
    report = json.loads((samples / "eval.json").read_text())
    real, ours = report["rows"]["real test split"], report["rows"]["samples"]
    assert ours["n"] == 125 and len(report["skipped"]) == 1
    assert ours["FID"] < 3 * real["FID"] + 1.0  # a subset of the real test split scores like it
    assert abs(ours["IS"] - real["IS"]) < 0.25 * real["IS"]
    assert (samples / "spectrograms.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_uses_likelihoods_to_tune_thresholds_on_half_and_report_the_other(fsdd_classifier, shared_data, tmp_path):
    samples = tmp_path / "gen"
    samples.mkdir()
    recordings = sorted((shared_data / "fsdd" / "recordings").glob("*_[0-4].wav"))[::5]
    records = []
    for k, path in enumerate(recordings):
        shutil.copy(path, samples / path.name)
        records.append({"file": path.name, "loglik_bits": float(-k), "label_name": path.name[0]})
    (samples / "samples.json").write_text(json.dumps({"samples": records}))
    main(["eval", "--samples", str(samples), "--classifier", str(fsdd_classifier),
          "--data", str(shared_data / "fsdd"), "--ndb-bins", "10", "--device", "cpu"])
    report = json.loads((samples / "eval.json").read_text())
    t = report["thresholds"]
    assert t["tuned_on"] + t["held_out"] == len(recordings) and 0 < t["kept"] <= t["held_out"]
    assert {"held-out half, unfiltered", "held-out half, likelihood-filtered"} <= set(report["rows"])
    assert 0.2 < report["requested_label_accuracy"] <= 1  # these are real clips of the asked-for digit


def test_png_writer_writes_a_valid_file(tmp_path):
    import numpy as np
    import zlib

    write_png(tmp_path / "x.png", np.arange(12, dtype=np.uint8).reshape(3, 4))
    data = (tmp_path / "x.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"IHDR" in data and b"IEND" in data
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    assert zlib.decompress(idat) == b"".join(b"\x00" + bytes(range(4 * r, 4 * r + 4)) for r in range(3))

"""The web demo: its API through gradio_client, bad input, and the page in a real headless browser."""
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from audiomamba.config import ModelConfig  # noqa: E402
from audiomamba.eval.classifier import ClassifierConfig, SpeechClassifier  # noqa: E402
from audiomamba.models.lm import WaveformLM  # noqa: E402
from audiomamba.webdemo import DemoModels, build_demo  # noqa: E402
from tests.conftest import write_tone  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=8, pool=[2, 2], outer=["s4d", "mlp"], center=["mamba"], s4d_state=4, mamba_state=4,
                      n_classes=2)
    classifier = SpeechClassifier(ClassifierConfig(sample_rate=8000, clip_samples=8000, labels=["yes", "no"], width=16))
    models = DemoModels(WaveformLM(cfg).eval(), 8000, ["yes", "no"], "**Model:** a tiny test model",
                        classifier.eval())
    demo = build_demo(models, tmp_path_factory.mktemp("demo"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_generate_returns_16_bit_wavs_of_the_asked_length_with_metadata(server):
    import soundfile

    result = Client(server, verbose=False).predict(2, 3, 1.0, 1.0, 0.1, "yes", None, 2.0, api_name="/generate")
    status, slots = result[0], result[1:]
    assert status.startswith("Done: 2 clip(s)")
    wav, png, info = slots[0], slots[1], slots[2]  # per clip: audio, spectrogram, text (groups are layout)
    audio, rate = soundfile.read(wav)
    assert rate == 8000 and len(audio) == 800 and np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert soundfile.info(wav).subtype == "PCM_16"
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
    assert "bits per sample" in info and "Classifier hears" in info
    assert slots[3] is not None and slots[6] is None  # clip 2 shown, clip 3 not


def test_a_prefix_is_continued_and_odd_rates_and_stereo_are_converted(server, tmp_path):
    path = tmp_path / "stereo_44k.wav"
    write_tone(path, 300, 44100, 0.05, channels=2)
    import soundfile

    result = Client(server, verbose=False).predict(1, 0, 1.0, 1.0, 0.1, "any", handle_file(str(path)), 1.0,
                                                   api_name="/generate")
    audio, rate = soundfile.read(result[1])
    assert rate == 8000 and len(audio) == 800


def test_out_of_range_controls_are_refused_with_a_message_or_clamped(server):
    client = Client(server, verbose=False)
    with pytest.raises(Exception, match="greater than maximum value 8"):  # sliders: Gradio refuses
        client.predict(50, 0, 1.0, 1.0, 0.1, "no", None, 1.0, api_name="/generate")
    result = client.predict(1, -4, 1.0, 1.0, 0.1, "no", None, 1.0, api_name="/generate")  # seed: clamped to 0
    assert result[0].startswith("Done: 1 clip(s)")


@pytest.mark.parametrize("content, message", [(b"this is not audio", "not usable audio"), (b"", "not usable audio")])
def test_bad_uploads_give_a_clear_message(server, tmp_path, content, message):
    path = tmp_path / "upload.wav"
    path.write_bytes(content)
    with pytest.raises(Exception, match=message):
        Client(server, verbose=False).predict(1, 0, 1.0, 1.0, 0.1, "any", handle_file(str(path)), 1.0, api_name="/generate")


def test_a_prefix_over_a_minute_is_refused(server, tmp_path):
    path = tmp_path / "long.wav"
    write_tone(path, 200, 8000, 61)
    with pytest.raises(Exception, match="at most 60 s"):
        Client(server, verbose=False).predict(1, 0, 1.0, 1.0, 0.1, "any", handle_file(str(path)), 1.0, api_name="/generate")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (.ci/run installs it)")
def test_page_generates_clips_in_a_real_browser(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(server)
        assert page.get_by_label("Word to say").first.input_value() == "yes"  # a conditional model starts on a word
        page.get_by_label("Number of clips").first.fill("2")
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Done: 2 clip(s)").wait_for(timeout=120_000)
        page.locator("audio").first.wait_for(state="attached", timeout=30_000)  # Gradio 6 hides the element
        images = page.locator("img[src*='clip_']")
        images.first.wait_for(timeout=30_000)
        assert page.locator("audio").count() >= 2 and images.count() >= 2
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_stop_ends_generation_early_and_keeps_what_was_made(server):
    import time

    client = Client(server, verbose=False)
    job = client.submit(8, 0, 1.0, 1.0, 4.0, "any", None, 1.0, api_name="/generate")  # 8 clips x 4 s: long
    time.sleep(3)
    client.predict(api_name="/stop")
    result = job.result(timeout=120)
    assert "stopped early" in result[0]
    import soundfile

    audio, rate = soundfile.read(result[1])
    assert 0 < len(audio) < 4 * rate  # shorter than asked, but kept

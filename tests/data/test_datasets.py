import pytest
import soundfile

from audiomamba.config import DataConfig
from audiomamba.data.audio import AudioFileError
from audiomamba.data.clipset import load_packed, load_split, read_split, save_packed
from audiomamba.data.datasets import SC09_WORDS, fsdd_clips, speech_commands_clips, speech_commands_split


def test_shared_words_folder_is_official_test_speakers_so_training_needs_a_salted_split(shared_data):
    root = shared_data / "speech_commands_words"
    assert len(speech_commands_clips(root, "test")[0]) == 3571  # every speaker hashes to "test"
    with pytest.raises(ValueError, match="split_salt"):
        speech_commands_clips(root, "train")


def test_salted_rule_keeps_each_speaker_in_one_split(shared_data):
    root = shared_data / "speech_commands_words"
    splits = {s: speech_commands_clips(root, s, salt="audiomamba")[0] for s in ("train", "validation", "test")}
    total = sum(len(v) for v in splits.values())
    assert total == 3571  # every clip lands in exactly one split
    speakers = {s: {c.speaker for c in clips} for s, clips in splits.items()}
    assert not (speakers["train"] & speakers["validation"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["validation"] & speakers["test"])
    assert 0.75 < len(splits["train"]) / total < 0.92  # about 80 / 10 / 10, by speaker
    _, names = speech_commands_clips(root, "train", salt="audiomamba")
    assert names == sorted(["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"])


def test_split_rule_matches_the_dataset_definition():
    # The rule hashes only the speaker part, so all takes of a speaker agree.
    assert speech_commands_split("yes/0a7c2a8d_nohash_0.wav") == speech_commands_split("no/0a7c2a8d_nohash_3.wav")


def test_official_lists_take_precedence(tmp_path):
    from tests.conftest import write_tone

    for word in ("zero", "one"):
        (tmp_path / word).mkdir()
        for spk in ("aaaa1111", "bbbb2222", "cccc3333"):
            write_tone(tmp_path / word / f"{spk}_nohash_0.wav", 400, 16000, 0.05)
    (tmp_path / "validation_list.txt").write_text("zero/aaaa1111_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("one/bbbb2222_nohash_0.wav\n")
    val, _ = speech_commands_clips(tmp_path, "validation", ["zero", "one"])
    test, _ = speech_commands_clips(tmp_path, "test", ["zero", "one"])
    train, _ = speech_commands_clips(tmp_path, "train", ["zero", "one"])
    assert [c.path.name for c in val] == ["aaaa1111_nohash_0.wav"]
    assert [c.path.name for c in test] == ["bbbb2222_nohash_0.wav"]
    assert len(train) == 4


def test_sc09_sample_loads_at_16k_with_fixed_length(shared_data):
    cfg = DataConfig(root=str(shared_data / "sc09_sample"), words=SC09_WORDS)
    clips = [read_split(cfg, s) for s in ("train", "validation", "test") if speech_commands_clips(cfg.root, s, SC09_WORDS)[0]]
    assert sum(len(c) for c in clips) == 50
    for c in clips:
        assert c.tokens.shape[1] == 16000 and c.sample_rate == 16000
        assert set(c.labels.tolist()) <= set(range(10))


def test_fsdd_test_split_is_takes_0_to_4(shared_data):
    test, names = fsdd_clips(shared_data / "fsdd", "test")
    train, _ = fsdd_clips(shared_data / "fsdd", "train")
    val, _ = fsdd_clips(shared_data / "fsdd", "validation")
    assert names == [str(d) for d in range(10)]
    assert (len(train), len(val), len(test)) == (2000, 250, 250)
    assert all(int(c.path.stem.split("_")[2]) < 5 for c in test)


def test_fsdd_resampled_to_16k_when_asked(shared_data, tmp_path):
    cfg = DataConfig(dataset="fsdd", root=str(shared_data / "fsdd"), sample_rate=16000, clip_samples=16000)
    first = fsdd_clips(cfg.root, "test")[0][0]
    native = soundfile.info(str(first.path)).frames
    from audiomamba.data.audio import read_clip

    audio = read_clip(first.path, 16000)
    assert abs(len(audio) - 2 * native) <= 1


def test_missing_root_and_empty_word_folder_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        speech_commands_clips(tmp_path / "nowhere", "train")
    (tmp_path / "yes").mkdir()
    with pytest.raises(FileNotFoundError, match="yes"):
        speech_commands_clips(tmp_path, "train", ["yes"])


def test_corrupt_file_stops_with_its_name_or_is_skipped_and_counted(tiny_fsdd):
    bad = tiny_fsdd / "recordings" / "1_ann_20.wav"
    bad.write_bytes(b"garbage")
    cfg = DataConfig(dataset="fsdd", root=str(tiny_fsdd), sample_rate=8000, clip_samples=400)
    with pytest.raises(AudioFileError, match="1_ann_20.wav"):
        read_split(cfg, "train")
    cfg.skip_bad = True
    clips = read_split(cfg, "train")
    assert clips.skipped == [str(bad)] and len(clips) == 3 * 2 * 2


def test_packed_split_round_trips(tiny_fsdd, tmp_path):
    cfg = DataConfig(dataset="fsdd", root=str(tiny_fsdd), sample_rate=8000, clip_samples=400)
    clips = read_split(cfg, "test")
    save_packed(clips, tmp_path / "packed" / "test.safetensors")
    back = load_packed(tmp_path / "packed" / "test.safetensors")
    assert back.tokens.dtype.itemsize == 1
    assert back.tokens.equal(clips.tokens) and back.labels.equal(clips.labels)
    assert back.speakers == clips.speakers and back.label_names == clips.label_names
    cfg.packed_dir = str(tmp_path / "packed")
    assert load_split(cfg, "test").tokens.equal(clips.tokens)
    cfg.clip_samples = 800
    with pytest.raises(ValueError, match="400-sample clips"):
        load_split(cfg, "test")

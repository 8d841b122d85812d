"""Fault suite (issue 15, defect 7): a WAV truncated after its header, which claims more frames than the
file holds, is refused (libsndfile clamps the ``data`` chunk and returned the frames present; the FSD tile
rule then repeated the half clip). A truncated FLAC already was.
"""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import soundfile

from harness.audio import audio_info, read_audio, wav_header_frames
from harness.errors import EXIT_USAGE, AudioError


def truncate(path, keep_fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def test_header_frames_parsed_independently(tmp_path):
    """The claimed count, computed by hand from the RIFF layout: data bytes / (channels · 2 bytes)."""
    x = np.zeros((1000, 2), np.float32)
    path = tmp_path / "a.wav"
    soundfile.write(path, x, 16000, subtype="PCM_16")
    raw = path.read_bytes()
    i = raw.index(b"data")
    assert struct.unpack("<I", raw[i + 4: i + 8])[0] == 1000 * 2 * 2
    assert wav_header_frames(path) == 1000
    soundfile.write(tmp_path / "b.flac", x, 16000)
    assert wav_header_frames(tmp_path / "b.flac") is None


def test_truncated_wav_is_refused(dev_data, tmp_path):
    src = sorted((dev_data / "voicebank-demand" / "noisy_testset_wav").glob("*.wav"))[0]
    path = tmp_path / src.name
    shutil.copyfile(src, path)
    full = soundfile.info(path).frames
    assert len(read_audio(path)) == full
    truncate(path)
    assert soundfile.read(path)[0].shape[0] < full  # libsndfile reads the half that is there
    with pytest.raises(AudioError, match=rf"{path.name} is truncated: its header claims {full} frames"):
        read_audio(path)
    with pytest.raises(AudioError, match="is truncated"):
        audio_info(path)


def test_truncated_wav_in_a_corpus_fails_the_build(dev_data, tmp_path, cli_stderr):
    """A FSDKaggle2018 test clip stored as a WAV cut in half: the build stops naming the file (exit 2)."""
    root = tmp_path / "fsdk"
    shutil.copytree(dev_data / "fsdkaggle2018", root, symlinks=False)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    flac = sorted((root / "FSDKaggle2018.audio_test").glob("*.flac"))[0]
    x, sr = soundfile.read(flac, dtype="int16")
    wav = flac.with_suffix(".wav")
    soundfile.write(wav, x, sr, subtype="PCM_16")
    flac.unlink()
    truncate(wav)
    code, err = cli_stderr(["build-mixtures", "fsdkaggle2018", "--root", root, "--workdir", tmp_path / "wd",
                            "--quiet"])
    assert code == EXIT_USAGE, err
    assert f"{wav.name} is truncated" in err
    assert not (tmp_path / "wd" / "mixtures" / "fsdkaggle2018" / "test").exists()

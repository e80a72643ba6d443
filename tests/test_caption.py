"""`clipmemcap caption`: windows, whole video, URLs through yt-dlp from 127.0.0.1, JSON, and a
clear error with a non-zero exit for every kind of bad input. The model is a random-initialised
fine-tuning checkpoint laid out as the pipeline writes one (the DVC test captions with checkpoints
the pipeline trained and compares with the evaluate stage)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clipmemcap.core.atomic import write_json
from clipmemcap.cli import main
from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.core.config import load_config
from clipmemcap.frames.embed import encoder_settings
from clipmemcap.model.mappers import MapperConfig, build_mapper, save_mapper
from clipmemcap.core.layout import CLIP_SETTINGS
from clipmemcap.model.prefix_lm import load_gpt2
from clipmemcap.sources.synthetic import write_video
from conftest import GPT2_TINY, ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Committed settings with storage in a temporary folder, one fine-tuning run folder in it,
    and a 7.3 s video."""
    root = tmp_path_factory.mktemp("caption")
    settings = [f"storage.root={root / 'storage'}", "clip.device=cpu"]
    cfg = load_config(ROOT / "params.yaml", settings)
    encoder = ClipEncoder(cfg.clip)
    run = root / "storage" / "models" / "finetune" / "memorizing-0"
    mapper = build_mapper(MapperConfig.load("video-memorizing", clip_dim=encoder.embed_dim, embed_dim=64, layers=2,
                                            heads=4, prefix_length=4, window=16))
    save_mapper(mapper, run / "best" / "mapper")
    load_gpt2(GPT2_TINY).save_pretrained(run / "best" / "gpt2")
    write_json(run / CLIP_SETTINGS, encoder_settings(encoder, cfg.clip.embedding_dtype, fps=cfg.activitynet.fps))
    video = root / "v_captionme01.mp4"
    write_video(video, 7.3, 160, 120)
    return root, settings, run, video


def caption(settings, *args) -> str:
    main(["caption", *args, "--params", str(ROOT / "params.yaml"), *[a for s in settings for a in ("--set", s)]])


def test_windows_whole_video_and_json(setup, capsys):
    root, settings, run, video = setup
    caption(settings, str(video), "--window", "3")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["0:00:00.0 - 0:00:03.0", "0:00:03.0 - 0:00:06.0",
                                                       "0:00:06.0 - 0:00:07.3"]
    assert all(line.split("  ", 1)[1].strip() for line in lines)  # a caption on every line

    caption(settings, str(video), "--json", "--checkpoint", str(run))  # the whole video, one clip
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "VERSION 1.0"
    [(name, [segment])] = shown["results"].items()
    assert name == "v_captionme01" and segment["timestamp"] == [0.0, pytest.approx(7.3, abs=0.05)]

    caption(settings, str(video), "--json", "--segments", "1-2.5", "0.5-6")
    assert [s["timestamp"] for s in json.loads(capsys.readouterr().out)["results"]["v_captionme01"]] == [[0.5, 6.0], [1.0, 2.5]]


@pytest.mark.parametrize("memory", ["reservoir", "merge", "kmeans", "recurrent"])
def test_a_captioner_with_a_slot_memory_captions_a_whole_video(setup, memory, capsys):
    """`clipmemcap caption` streams the video's frames through the checkpoint's memory (here 4
    slots, far fewer than the video's 37 frames; streamed = whole clip: tests/test_slot_memories.py),
    and the checkpoint's config says which memory it is."""
    root, settings, run, video = setup
    slots = root / "storage" / "models" / "finetune" / f"{memory}-0"
    shutil.copytree(run, slots, dirs_exist_ok=True)
    cfg = MapperConfig.load("video-memorizing", clip_dim=ClipEncoder(load_config(ROOT / "params.yaml", settings).clip).embed_dim,
                            embed_dim=64, layers=2, heads=4, prefix_length=4, window=4, memory=memory, memory_capacity=4,
                            retrieval="dense", differentiable=memory == "recurrent")
    save_mapper(build_mapper(cfg), slots / "best" / "mapper")
    caption(settings, str(video), "--json", "--checkpoint", str(slots))
    [(_, [segment])] = json.loads(capsys.readouterr().out)["results"].items()
    assert segment["sentence"].strip() and segment["timestamp"] == [0.0, pytest.approx(7.3, abs=0.05)]
    assert json.loads((slots / "best" / "mapper" / "config.json").read_text())["memory"] == memory


def test_a_url_is_fetched_with_yt_dlp(setup, http_server, capsys):
    root, settings, run, video = setup
    (http_server.root / "videos").mkdir()
    shutil.copy(video, http_server.root / "videos" / "clip.mp4")
    caption(settings + [f"storage.work={root / 'work'}"], f"{http_server.url}/videos/clip.mp4", "--window", "4")
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert http_server.hits["/videos/clip.mp4"] >= 1

    # Another video under the same file name at another URL is another video: the download cache
    # was keyed by the file name alone and captioned the first video for the second.
    (http_server.root / "other").mkdir()
    write_video(http_server.root / "other" / "clip.mp4", 2.5, 160, 120)
    caption(settings + [f"storage.work={root / 'work'}"], f"{http_server.url}/other/clip.mp4", "--window", "4")
    assert [line.split("  ")[0] for line in capsys.readouterr().out.splitlines()] == ["0:00:00.0 - 0:00:02.5"]
    assert http_server.hits["/other/clip.mp4"] >= 1


@pytest.mark.parametrize("case,words", [
    ("missing", "no such video file"),
    ("unreadable", "is not a readable video"),
    ("outside", "lies outside the video (0-7.30 s)"),
    ("backwards", "lies outside the video"),
    ("malformed", "is not START-END in seconds"),
    ("url-404", "could not download"),
    ("no-checkpoint", "no fine-tuned model under"),
    ("other-clip", "trained on frames of another CLIP"),
    ("window-inf", "--window must be a positive number of seconds, not inf"),  # exited 0 with no output
    ("window-tiny", "more than 100,000 segments"),  # planned 10^7 segments (2.2 GB)
    # over-long inputs ended in OSError tracebacks (ENAMETOOLONG)
    ("long-name", "is too long (309 bytes, longest name 304"),
    ("long-path", "is too long (6008 bytes"),
    ("long-url-name", "could not download"),  # the download's own file name no longer overflows
    ("long-url", "is longer than 2048 characters"),
    ("url-secret", "missing.mp4?token=REDACTED"),  # the token was printed with the error
])
def test_bad_input_names_itself_and_exits_non_zero(setup, http_server, tmp_path, case, words):
    root, settings, run, video = setup
    args = [str(video)]
    if case == "missing":
        args = [str(tmp_path / "nope.mp4")]
    elif case == "unreadable":
        (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
        args = [str(tmp_path / "noise.mp4")]
    elif case == "outside":
        args += ["--segments", "2-9"]
    elif case == "backwards":
        args += ["--segments", "5-2"]
    elif case == "malformed":
        args += ["--segments", "two-five"]
    elif case == "window-inf":
        args += ["--window", "inf"]
    elif case == "window-tiny":
        args += ["--window", "1e-6"]
    elif case == "long-name":
        args = [f"/tmp/{'a' * 300}.mp4"]
    elif case == "long-path":
        args = [f"/tmp{'/x' * 3000}.mp4"]
    elif case in ("long-url-name", "long-url", "url-secret"):
        args = [{"long-url-name": f"{http_server.url}/{'a' * 300}.mp4", "long-url": f"{http_server.url}/{'b/' * 1100}",
                 "url-secret": f"{http_server.url}/videos/missing.mp4?token=s3cr3t"}[case]]
        settings = settings + [f"storage.work={tmp_path}", "activitynet.download.retries=0"]
    elif case == "url-404":
        args = [f"{http_server.url}/videos/missing.mp4"]
        settings = settings + [f"storage.work={tmp_path}", "activitynet.download.retries=0"]
    elif case == "no-checkpoint":
        settings = settings + [f"storage.root={tmp_path}"]
    elif case == "other-clip":
        other = tmp_path / "run"
        shutil.copytree(run, other)
        recorded = json.loads((other / CLIP_SETTINGS).read_text())
        write_json(other / CLIP_SETTINGS, {**recorded, "model": "ViT-B-32", "embed_dim": 512})
        args += ["--checkpoint", str(other)]
    with pytest.raises(SystemExit) as exit_:
        caption(settings, *args)
    assert words in str(exit_.value.code), exit_.value.code
    assert "s3cr3t" not in str(exit_.value.code)


def test_the_command_exits_non_zero_with_the_message_on_stderr(setup, tmp_path):
    root, settings, run, video = setup
    done = subprocess.run([sys.executable, "-m", "clipmemcap.cli", "caption", str(tmp_path / "gone.mp4"),
                           "--params", str(ROOT / "params.yaml"), "--set", settings[0]], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "no such video file" in done.stderr and not done.stdout

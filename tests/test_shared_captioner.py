"""A shared captioner folder is untrusted input (`clipmemcap caption --checkpoint FOLDER`): absurd
sizes in its configs are refused before anything is allocated, and a truncated or pickled weights
file, a vocabulary that is endless or out of range, unreadable numbers or an unknown format each
end in one line that names the file, with a bounded amount of memory. The folder is the one the
evaluate stage exports (README "Sharing a captioner"), of a random-initialised model."""

from __future__ import annotations

import json
import pickle
import resource
import shutil

import pytest

from clipmemcap.cli import main
from clipmemcap.core.atomic import write_json
from clipmemcap.core.config import load_config
from clipmemcap.core.layout import CAPTIONER, CLIP_SETTINGS, VOCABULARY
from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.frames.embed import encoder_settings
from clipmemcap.model.captioner import CAPTIONER_FORMAT, CaptionModel
from clipmemcap.model.mappers import MapperConfig, build_mapper
from clipmemcap.model.prefix_lm import PrefixLM, caption_vocabulary, load_gpt2, load_tokenizer
from clipmemcap.sources.synthetic import write_video
from clipmemcap.training.loop import save_weights
from conftest import GPT2_TINY, ROOT, TOKENIZER

SETTINGS = ["clip.device=cpu"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """An exported captioner's folder (restricted vocabulary) and a 4 s video."""
    root = tmp_path_factory.mktemp("shared")
    cfg = load_config(ROOT / "params.yaml", SETTINGS)
    encoder = ClipEncoder(cfg.clip)
    tokenizer = load_tokenizer(TOKENIZER)
    mapper = build_mapper(MapperConfig.load("video-memorizing", clip_dim=encoder.embed_dim, embed_dim=64, layers=2,
                                            heads=4, prefix_length=4, window=16))
    vocabulary = caption_vocabulary(tokenizer, ["a red circle, then a blue square."], tokenizer(".")["input_ids"])
    folder = root / "captioner"
    save_weights(CaptionModel(mapper, PrefixLM(load_gpt2(GPT2_TINY), tokenizer.eos_token_id, vocabulary=vocabulary)),
                 folder)
    shutil.copytree(TOKENIZER, folder / "tokenizer", ignore=shutil.ignore_patterns("README.md"))
    write_json(folder / CLIP_SETTINGS, encoder_settings(encoder, cfg.clip.embedding_dtype, fps=cfg.activitynet.fps))
    write_json(folder / CAPTIONER, {"format": CAPTIONER_FORMAT, "run": "memorizing", "seed": 0})
    video = root / "v_sharedclip1.mp4"
    write_video(video, 4.0, 160, 120)
    return folder, video


def caption(folder, video) -> None:
    main(["caption", str(video), "--checkpoint", str(folder), "--params", str(ROOT / "params.yaml"),
          *[a for s in SETTINGS for a in ("--set", s)]])


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def raw_number(path, field, text):
    """Replace ``field``'s value in a JSON file with ``text`` as written (1e999, 400 digits)."""
    data = json.loads(path.read_text())
    data[field] = "@@"
    path.write_text(json.dumps(data).replace('"@@"', text))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def pickled(path):
    path.write_bytes(pickle.dumps({"weight": [0.0] * 10}))


def to_dev_zero(path):
    path.unlink()
    path.symlink_to("/dev/zero")


CASES = {
    "mapper-layers": (lambda f: edit_json(f / "mapper/config.json", layers=10**9), "mapper layers must be an integer in [1, 256]"),
    "mapper-width": (lambda f: edit_json(f / "mapper/config.json", embed_dim=2**15), "mapper embed_dim must be an integer"),
    "mapper-more-than-its-file": (lambda f: edit_json(f / "mapper/config.json", layers=4),
                                  "does not hold the model its config describes: missing"),
    "gpt2-layers": (lambda f: edit_json(f / "gpt2/config.json", n_layer=10**6), "GPT-2 n_layer must be an integer in [1, 256]"),
    "gpt2-positions": (lambda f: edit_json(f / "gpt2/config.json", n_positions=10**9), "GPT-2 n_positions must be"),
    "gpt2-more-than-its-file": (lambda f: edit_json(f / "gpt2/config.json", n_layer=8), "its config describes"),
    "mapper-truncated": (lambda f: truncate(f / "mapper/model.safetensors"), "is not a readable safetensors file"),
    "gpt2-truncated": (lambda f: truncate(f / "gpt2/model.safetensors"), "is not a readable safetensors file"),
    "mapper-pickle": (lambda f: pickled(f / "mapper/model.safetensors"), "is not a readable safetensors file"),
    "gpt2-pickle-only": (lambda f: ((f / "gpt2/model.safetensors").rename(f / "gpt2/pytorch_model.bin"),
                                    pickled(f / "gpt2/pytorch_model.bin")), "weights are read from safetensors only"),
    "vocabulary-dev-zero": (lambda f: to_dev_zero(f / VOCABULARY), "vocabulary.json is not a regular file"),
    "vocabulary-out-of-range": (lambda f: (f / VOCABULARY).write_text(json.dumps([13, 50256, 10**6])),
                                "holds token ids of GPT-2's 50,257 only"),
    "vocabulary-not-a-list": (lambda f: (f / VOCABULARY).write_text('{"ids": [1]}'), "expected a JSON list"),
    "tokenizer-dev-zero": (lambda f: to_dev_zero(f / "tokenizer/vocab.json"), "vocab.json is not a regular file"),
    "json-1e999": (lambda f: raw_number(f / "mapper/config.json", "mlp_ratio", "1e999"), "1e999 is not a finite number"),
    "json-400-digits": (lambda f: raw_number(f / "mapper/config.json", "window", "9" * 400), "an integer of 400 digits"),
    "json-nan": (lambda f: raw_number(f / "gpt2/config.json", "layer_norm_epsilon", "NaN"), "NaN is not a JSON number"),
    "unknown-format": (lambda f: edit_json(f / CAPTIONER, format=99), "unknown captioner format 99"),
    "unknown-setting": (lambda f: edit_json(f / "mapper/config.json", evil=1), "unknown mapper settings evil"),
    "clip-json-dev-zero": (lambda f: to_dev_zero(f / CLIP_SETTINGS), "is not a fine-tuning run of this pipeline"),
}


def test_the_shared_captioner_captions(shared, capsys):
    folder, video = shared
    caption(folder, video)
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_captioner_folder_ends_in_one_line_naming_it(shared, tmp_path, case):
    folder, video = shared
    hostile = tmp_path / "captioner"
    shutil.copytree(folder, hostile, symlinks=True)
    change, words = CASES[case]
    change(hostile)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(SystemExit) as refused:
        caption(hostile, video)
    message = str(refused.value.code)
    assert words in message and str(hostile) in message and "\n" not in message, message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300_000  # nothing big was allocated

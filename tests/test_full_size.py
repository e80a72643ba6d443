"""The real experiment at full size, offline: `clipmemcap preset activitynet`, then `dvc repro report`
and `dvc metrics diff` of the baseline and the memorizing run, in a fresh git repository.

The real architectures run: CLIP ViT-B-32, GPT-2 124M (12 layers of 768, the full 50,257-token
output layer), ClipCap's Transformer mapper for pre-training, the 8-layer memorizing and temporal
mappers. Only what cannot exist here is replaced, and each replacement is named below: the
internet by an HTTP server on 127.0.0.1 serving a synthetic ActivityNet (captions.zip + h264
videos) and a synthetic COCO (Karpathy zip + JPEG images); pretrained weights by random weights of
the same architectures, saved to disk as pretrained ones are (an open_clip state dict; GPT-2 with
``save_pretrained``) and loaded by path; the hub's tokenizer by the same GPT-2 tokenizer files in
the package. The data is a handful of videos and images and training is one epoch: this checks
that the full-size path runs and is wired right, not what it learns."""

from __future__ import annotations

import json
import shutil
import time

import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel

from clipmemcap.cli import main
from clipmemcap.core.config import apply_overrides, load_config
from clipmemcap.sources.synthetic import make_activitynet_source, make_coco_source
from conftest import ROOT, TOKENIZER
from test_dvc_stage import commit, dvc, run

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1800)  # about 10 minutes on 2 cores
def test_the_real_preset_at_full_size_offline(tmp_path, http_server, prefect_server):
    started = time.monotonic()
    www = http_server.root
    activitynet = make_activitynet_source(tmp_path / "anet", n_train=3, n_test=2, min_duration=5.0, max_duration=8.0, seed=3)
    shutil.copytree(activitynet.videos_dir, www / "videos")
    shutil.copy(activitynet.zip_path, www / "captions.zip")
    coco = make_coco_source(tmp_path / "coco", n_images=12, seed=3)
    shutil.copytree(coco.images_root, www / "coco")
    shutil.copy(coco.captions_path, www / "caption_datasets.zip")

    # Random weights of the real architectures, saved as pretrained weights would be.
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), tmp_path / "vit-b-32.pt")
    GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp_path / "gpt2-124m")  # GPT2Config(): GPT-2 124M

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("clipmemcap", "flows", "presets"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    main(["preset", str(repo / "presets" / "activitynet.yaml"), "--params", str(repo / "params.yaml")])
    preset = yaml.safe_load((repo / "params.yaml").read_text())
    assert preset["clip"]["model"] == "ViT-B-32" and preset["pretrain"]["mapper"] == "clipcap-transformer"
    # `last` is `uniform`'s mapper with another frame policy (the benchmark's tests run both); left
    # out, it saves about 5 GB of disk (GPT-2 is trained: each run stores and caches its weights)
    assert preset["finetune"]["runs"].pop("last") == {"mapper": "video-temporal", "mapper_overrides": {"frame_policy": "last"}}
    offline = [
        f"activitynet.annotations_url={http_server.url}/captions.zip",
        f"activitynet.video_url_template={http_server.url}/videos/v_{{youtube_id}}.mp4",
        "activitynet.subset.train_videos=3", "activitynet.subset.test_videos=2", "activitynet.subset.val_fraction=0.34",
        f"coco.captions_url={http_server.url}/caption_datasets.zip",
        f"coco.images_url_template={http_server.url}/coco/{{file}}",
        "coco.images_dir=null",
        f"clip.pretrained={tmp_path / 'vit-b-32.pt'}", "clip.device=cpu",
        f"model.lm={tmp_path / 'gpt2-124m'}", f"model.tokenizer={TOKENIZER}",
        # a few steps on 2 cores: small batches, one epoch, short beams
        "pretrain.train.epochs=1", "pretrain.train.batch_size=8", "pretrain.train.device=cpu",
        "finetune.train.epochs=1", "finetune.train.batch_size=8", "finetune.train.device=cpu",
        "evaluate.max_tokens=8", "evaluate.beam=2",
    ]
    (repo / "params.yaml").write_text(yaml.safe_dump(apply_overrides(preset, offline), sort_keys=False))
    cfg = load_config(repo / "params.yaml")
    assert cfg.evaluate.dense_protocol and cfg.model.vocabulary == "full" and not cfg.report.slot_accuracy
    run(["git", "init", "-q"], repo)
    dvc("init", "-q", cwd=repo)
    commit(repo, "the real preset, offline")

    dvc("repro", "report", cwd=repo)
    storage = repo / "storage"
    manifest = json.loads((storage / "activitynet" / "manifest.json").read_text())
    assert manifest["clip"]["embed_dim"] == 512 and manifest["clip"]["model"] == "ViT-B-32"
    assert len(manifest["video_ids"]["train"]) == 3 and len(manifest["video_ids"]["test"]) == 2
    assert len(pq.read_table(storage / "activitynet" / "references" / "val_2.parquet")) > 0
    pretrained = json.loads((storage / "models" / "pretrain" / "best" / "mapper" / "config.json").read_text())
    assert pretrained["kind"] == "transformer" and pretrained["embed_dim"] == 768
    for name, kind in (("memorizing", "memorizing"), ("uniform", "temporal"), ("mean", "transformer")):
        exported = storage / "captioners" / f"{name}-0"
        mapper = json.loads((exported / "mapper" / "config.json").read_text())
        gpt2 = json.loads((exported / "gpt2" / "config.json").read_text())
        assert mapper["kind"] == kind and (gpt2["n_layer"], gpt2["n_embd"], gpt2["vocab_size"]) == (12, 768, 50257)
        metrics = json.loads((repo / "metrics" / "runs" / f"{name}-0.json").read_text())
        assert {"bleu_4", "protocol_bleu_4", "protocol_meteor", "protocol_val_2_bleu_4"} <= metrics.keys()
        assert metrics["protocol_recall"] == 1.0  # the ground-truth segments of val_1 are all matched
        assert metrics["protocol_mean_bleu_4"] == pytest.approx(
            (metrics["protocol_val_1_bleu_4"] + metrics["protocol_val_2_bleu_4"]) / 2)
        official = json.loads((storage / "evaluation" / f"{name}-0" / "dense_protocol.json").read_text())
        assert list(official["val_1+val_2"]["per_tiou"]) == ["0.3", "0.5", "0.7", "0.9"]
        assert official["val_1+val_2"]["references"] == 2 and official["val_2"]["videos"] > 0
    assert (json.loads((storage / "models" / "finetune" / "memorizing-0" / "best" / "mapper" / "config.json").read_text())
            ["layers"]) == 8
    assert "official protocol" in (repo / "reports" / "results" / "results.md").read_text()

    # the README's comparison of the baseline with the memorizing run
    commit(repo, "results")
    dvc("exp", "run", "-n", "baseline", "-S", "report.run=uniform", cwd=repo)
    dvc("exp", "run", "-n", "memorizing", "-S", "report.run=memorizing", cwd=repo)
    diff = json.loads(dvc("metrics", "diff", "baseline", "memorizing", "--all", "--json", cwd=repo))["metrics/run.json"]
    for metric in ("protocol_bleu_4", "protocol_meteor", "bleu_4"):
        assert isinstance(diff[metric]["old"], float) and isinstance(diff[metric]["new"], float), metric
    print(f"\nthe full-size DAG, offline: {time.monotonic() - started:.0f} s")

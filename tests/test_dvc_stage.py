"""The data flow as a real DVC stage in a temporary git repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import clipmemcap.clip_encoder  # noqa: F401  (registers the TinyViT config with open_clip)
from clipmemcap.config import apply_overrides, load_config
from clipmemcap.prefix_lm import load_gpt2
from clipmemcap.synthetic import make_coco_source, make_source
from conftest import ASSETS, ROOT, ingest_overrides

pytestmark = pytest.mark.slow


def run(command, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def commit(repo, message):
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.email=test@example.invalid", "-c", "user.name=test", "commit", "-qm", message], repo)


TINY_MODELS = [
    f"model.tokenizer={ASSETS / 'gpt2-tokenizer'}",
    "pretrain.mapper_overrides={layers: 2, heads: 4, clip_length: 2, prefix_length: 3}",
    "pretrain.train.batch_size=4", "pretrain.train.epochs=1", "pretrain.train.device=cpu", "pretrain.train.lr=0.001",
    "pretrain.train_splits=[train, restval]", "pretrain.val_splits=[val, test]",
    "finetune.mapper_overrides={layers: 2, heads: 4, prefix_length: 3, window: 4, top_k: 4}",
    "finetune.train.batch_size=4", "finetune.train.epochs=2", "finetune.train.device=cpu", "finetune.train.lr=0.001",
    "evaluate.beam=2", "evaluate.max_tokens=8", "evaluate.batch_size=4",
]


def test_the_whole_dag_then_baseline_and_memorizing_experiments(tmp_path, http_server, prefect_server):
    """Data flows -> pretrain -> finetune -> evaluate with dvc repro, then the README's comparison."""
    src = make_source(tmp_path / "src", n_train=6, n_test=2, min_duration=3, max_duration=6, seed=2)
    shutil.copytree(src.videos_dir, http_server.root / "videos")
    shutil.copy(src.zip_path, http_server.root / "captions.zip")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("clipmemcap", "flows"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    coco = make_coco_source(tmp_path / "coco", n_images=8)
    # Pretrained weights cannot be downloaded here: the stages load real weights from disk, as a
    # user's would, saved by this test from the tiny configs.
    torch.manual_seed(0)
    torch.save(open_clip.create_model("TinyViT", pretrained=None).state_dict(), tmp_path / "clip.pt")
    load_gpt2(ASSETS / "tiny-gpt2.json").save_pretrained(tmp_path / "gpt2")
    settings = ingest_overrides(http_server.url, Path("storage"), train=4, test=2, val_fraction=0.25) + [
        f"coco.captions_url={coco.captions_path}", f"coco.images_dir={coco.images_root}",
        f"clip.pretrained={tmp_path / 'clip.pt'}", f"model.lm={tmp_path / 'gpt2'}"] + TINY_MODELS
    params = apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), settings)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    load_config(repo / "params.yaml")  # still valid settings
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    commit(repo, "pipeline")  # as in a clone; dvclive needs a commit to log against

    run(["dvc", "repro"], repo)
    out = repo / "storage" / "activitynet"
    assert len(pq.read_table(out / "segments" / "train.parquet").to_pandas().video_id.unique()) == 4
    assert len(pq.read_table(repo / "storage" / "coco" / "captions.parquet").to_pandas().image_id.unique()) == 8
    metrics = json.loads((repo / "metrics" / "evaluation.json").read_text())
    assert {"bleu_4", "meteor", "rouge_l", "cider_d", "sentence_avg_bleu_4"} <= metrics.keys()
    predictions = json.loads((repo / "storage" / "evaluation" / "predictions.json").read_text())
    assert metrics["clips"] == len(predictions) == len(pq.read_table(out / "segments" / "test.parquet"))
    assert (repo / "reports" / "finetune" / "plots" / "metrics" / "train" / "loss.tsv").exists()
    plots = run(["dvc", "plots", "show", "--json"], repo)  # the curves dvclive logged, drawn by DVC
    for name in ("reports/pretrain/plots/metrics/train/loss.tsv", "reports/finetune/plots/metrics/train/lr.tsv"):
        assert name in plots
    assert run(["dvc", "repro"], repo).count("didn't change") == 5  # everything cached
    changed = apply_overrides(yaml.safe_load((repo / "params.yaml").read_text()), ["evaluate.beam=1"])
    (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    status = run(["dvc", "status"], repo)
    assert "evaluate" in status and not any(s in status for s in ("activitynet", "coco", "pretrain", "finetune"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))  # back to what ran

    # the comparison, as the README gives it
    commit(repo, "first run")
    baseline = run(["dvc", "exp", "run", "-n", "baseline", "-S", "finetune.mapper=video-temporal",
                    "-S", "+finetune.mapper_overrides.frame_policy=last"], repo)
    for stage in ("activitynet", "coco", "pretrain"):  # data and pre-training come from the cache
        assert f"'{stage}' didn't change" in baseline or f"Stage '{stage}' is cached" in baseline, baseline
    trained = repo / "storage" / "models" / "finetune" / "best" / "mapper" / "config.json"
    assert "Running stage 'finetune'" in baseline
    assert json.loads(trained.read_text())["kind"] == "temporal"
    assert json.loads(trained.read_text())["frame_policy"] == "last"
    memorizing = run(["dvc", "exp", "run", "-n", "memorizing", "-S", "finetune.mapper=video-memorizing"], repo)
    assert "Running stage 'finetune'" in memorizing and json.loads(trained.read_text())["kind"] == "memorizing"
    diff = run(["dvc", "metrics", "diff", "baseline", "memorizing", "--all", "--json"], repo)
    table = json.loads(diff)["metrics/evaluation.json"]
    for name in ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider_d"):
        assert isinstance(table[name]["old"], float) and isinstance(table[name]["new"], float), table


@pytest.mark.parametrize("stage,module", [("activitynet", "flows.activitynet"), ("coco", "flows.coco"),
                                          ("pretrain", "clipmemcap.pipeline"), ("finetune", "clipmemcap.pipeline"),
                                          ("evaluate", "clipmemcap.pipeline")])
def test_stage_deps_cover_every_project_module_the_flow_imports(stage, module):
    """A library change must re-run the stages whose outputs it can change."""
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() "
            "if n.split('.')[0] in ('clipmemcap', 'flows') and getattr(m, '__file__', None)))")
    files = run([sys.executable, "-c", code, module], ROOT).split()
    used = {str(Path(f).resolve().relative_to(ROOT)) for f in files if not f.endswith("__init__.py")}
    deps = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"])
    assert used - deps == set()
    assert all((ROOT / d).exists() for d in deps if not d.startswith("${"))

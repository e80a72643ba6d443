import pytest
from pydantic import ValidationError

import shutil
import subprocess
import sys

import yaml

from clipmemcap.core.config import Config, apply_preset, load_config
from conftest import ROOT


def test_the_real_experiment_preset_holds_the_published_settings():
    cfg = load_config(ROOT / "presets" / "activitynet.yaml")
    assert cfg.activitynet.fps == 5
    assert cfg.activitynet.subset.train_videos == 300 and cfg.activitynet.subset.test_videos == 100
    assert cfg.activitynet.annotations_url.startswith("https://") and "{youtube_id}" in cfg.activitynet.video_url_template
    assert cfg.clip.model == "ViT-B-32" and cfg.clip.pretrained == "openai"
    assert cfg.model.lm == "gpt2" and cfg.pretrain.mapper == "clipcap-transformer"
    assert cfg.pretrain.train.lr == 2e-5 and cfg.pretrain.train.batch_size == 40 and cfg.pretrain.train.epochs == 10
    assert set(cfg.finetune.runs) == {"memorizing", "uniform", "last", "mean"} and not cfg.report.slot_accuracy


def test_the_committed_params_run_the_benchmark_offline():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.activitynet.fps == 5 and "://" not in cfg.activitynet.annotations_url + cfg.coco.captions_url
    assert cfg.clip.model == "TinyViT-112" and cfg.clip.pretrained is None
    assert (ROOT / cfg.model.lm).is_file() and (ROOT / cfg.model.tokenizer / "vocab.json").is_file()
    assert cfg.finetune.seeds == (0, 1, 2) and cfg.report.slot_accuracy
    policies = {name: run.mapper_overrides.get("frame_policy") for name, run in cfg.finetune.runs.items()}
    assert policies == {"memorizing": None, "uniform": "uniform", "last": "last", "mean": "mean"}


def test_overrides_are_typed_and_nested():
    cfg = load_config(ROOT / "params.yaml", ["activitynet.subset.train_videos=7", "clip.pretrained=null",
                                             "activitynet.download.rate_limit=2M"])
    assert cfg.activitynet.subset.train_videos == 7
    assert cfg.clip.pretrained is None
    assert cfg.activitynet.download.rate_limit == "2M"


@pytest.mark.parametrize("override", ["activitynet.subset.trian_videos=3", "clip.batch_size=0",
                                      "clip.embedding_dtype=int8"])
def test_bad_settings_fail_loudly(override):
    with pytest.raises(ValidationError):
        load_config(ROOT / "params.yaml", [override])


def test_malformed_override_and_missing_file_name_the_input(tmp_path):
    with pytest.raises(ValueError, match="novalue"):
        load_config(None, ["novalue"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_storage_root_may_be_an_object_store_and_work_files_stay_local(monkeypatch):
    local = load_config(ROOT / "params.yaml")
    assert local.storage.cache == local.storage.root / "cache"
    remote = load_config(ROOT / "params.yaml", ["storage.root=s3://bucket/prefix"])
    assert str(remote.storage.root) == "s3://bucket/prefix"
    assert str(remote.storage.root / "activitynet") == "s3://bucket/prefix/activitynet"
    assert remote.storage.cache.is_relative_to("storage")  # a local folder, never the bucket
    assert load_config(ROOT / "params.yaml", ["storage.root=s3://b/p", "storage.work=/tmp/w"]).storage.cache.as_posix() == "/tmp/w"


def test_dask_address_comes_from_the_settings_or_the_environment(monkeypatch):
    monkeypatch.delenv("CLIPMEMCAP_DASK_ADDRESS", raising=False)
    assert load_config(ROOT / "params.yaml").dask.address is None
    monkeypatch.setenv("CLIPMEMCAP_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    assert load_config(ROOT / "params.yaml").dask.address == "tcp://10.0.0.5:8786"
    assert load_config(ROOT / "params.yaml", ["dask.address=tcp://a:1"]).dask.address == "tcp://a:1"


def test_code_defaults_are_the_committed_settings():
    """One place for defaults: the code's may not contradict params.yaml."""
    assert Config().model_dump(mode="json") == load_config(ROOT / "params.yaml").model_dump(mode="json")


def test_the_preset_is_an_overlay_that_clipmemcap_preset_writes_into_params(tmp_path):
    overlay = yaml.safe_load((ROOT / "presets" / "activitynet.yaml").read_text())
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert len(overlay) < len(committed) and "storage" not in overlay  # not a copy
    assert overlay["benchmark"] == {"build": []}  # of the benchmark, only: no benchmark stage in the real DAG
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    subprocess.run([sys.executable, "-m", "clipmemcap.cli", "preset", "activitynet"], cwd=tmp_path, check=True)
    written = load_config(tmp_path / "params.yaml")
    assert written == load_config(ROOT / "presets" / "activitynet.yaml")
    assert written.finetune.runs["mean"].mapper == "clipcap-transformer" and written.finetune.mapper_overrides == {}
    assert written.benchmark == load_config(ROOT / "params.yaml").benchmark.model_copy(update={"build": ()})  # the rest kept
    text = (tmp_path / "params.yaml").read_text()
    assert "# outputs under storage/<dataset>/" in text  # comments of unchanged settings kept
    assert "random weights: no model hub here" not in text  # ... but not those of replaced values


def test_the_study_preset_holds_every_pre_registered_run_on_a_test_set_with_the_defaults_clips(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    study = apply_preset(tmp_path / "params.yaml", ROOT / "presets" / "study.yaml")
    default = load_config(ROOT / "params.yaml")
    rep = study.report
    needed = {rep.memory_run, rep.all_frames_run, rep.random_run, *rep.baselines,
              *(run for pair in rep.comparisons.values() for run in pair)}
    # every hypothesis and comparison can be decided, and the oracle bound is there
    assert needed | {"oracle"} == set(study.finetune.runs) and study.finetune.runs["oracle"].frames == "oracle"
    assert study.activitynet.subset.test_videos >= 250 and study.benchmark == default.benchmark  # >= 500 + 500 clips
    assert study.finetune.train.patience and study.finetune.seeds == default.finetune.seeds
    assert study.activitynet.subset.model_copy(update={"test_videos": 25}) == default.activitynet.subset
    # only the preset's settings change: empty values stay empty (a global YAML representer once
    # wrote `null` into every one, and into every later DVC write in the same process)
    assert (tmp_path / "params.yaml").read_text().count("null") == (ROOT / "params.yaml").read_text().count("null")


def test_a_preset_naming_an_unknown_setting_is_an_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("clip: {modle: ViT-B-32}\n")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    with pytest.raises(ValueError, match="clip.modle"):
        apply_preset(tmp_path / "params.yaml", tmp_path / "bad.yaml")
    assert (tmp_path / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()


@pytest.mark.parametrize("override,name", [
    (f"coco.images_dir=/tmp/{'a' * 300}", "coco.images_dir"),
    (f"activitynet.annotations_url=/tmp{'/x' * 3000}.zip", "activitynet.annotations_url"),
    (f"activitynet.video_url_template=https://host/{'v' * 3000}", "activitynet.video_url_template"),
    (f"activitynet.download.cookies_file=/tmp/{'c' * 300}.txt", "cookies_file"),
    (f"storage.work=/tmp/{'w' * 300}", "storage.work"),
])
def test_paths_and_urls_longer_than_a_file_system_or_server_takes_are_refused(override, name):
    """An over-long path in the settings ended in an OSError traceback deep in a run."""
    with pytest.raises(ValidationError, match=name):
        load_config(ROOT / "params.yaml", [override])


@pytest.mark.parametrize("override,name", [
    ("activitynet.fps=.inf", "activitynet.fps"), ("finetune.train.lr=.nan", "finetune.train.lr"),
    ("activitynet.download.rate_limit=lots", "rate_limit"), ("activitynet.download.rate_limit=-2M", "rate_limit"),
    ('finetune.runs={"../x; rm -rf": {mapper: video-temporal}}', "run name"),
    ('finetune.runs={"a b": {mapper: video-temporal}}', "run name"),
    ("finetune.more_seeds=[memorizing-0]", "more_seeds"), ("finetune.more_seeds=[nope-3]", "more_seeds"),
    ('finetune.more_seeds=["../x-3"]', "more_seeds"), ("finetune.more_seeds=[uniform-3, uniform-3]", "twice"),
])
def test_numbers_are_finite_rate_limits_parse_and_run_names_are_safe(override, name):
    """inf and NaN passed every bound, a malformed rate_limit silently meant no limit, and run
    names reached DVC's shell commands and folder names unchecked."""
    with pytest.raises(ValidationError, match=name):
        load_config(ROOT / "params.yaml", [override])
    assert load_config(ROOT / "params.yaml", ["activitynet.download.rate_limit=2.5M"]).activitynet.download.rate_limit == "2.5M"


def test_params_are_laid_out_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S key=value` rewrites params.yaml with DVC's own YAML writer: a layout it
    would change (a comment after a list's last item, flow style) would make the README's
    experiments leave the workspace changed, as CI once caught. Setting values to themselves must
    change no byte."""
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    committed = load_config(ROOT / "params.yaml")
    copy = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", copy)
    dvc_apply_overrides(str(copy), [f"report.run={committed.report.run}",
                                    f"finetune.train.epochs={committed.finetune.train.epochs}",
                                    f"activitynet.subset.train_videos={committed.activitynet.subset.train_videos}"])
    assert copy.read_text() == (ROOT / "params.yaml").read_text()


def test_an_unstable_run_takes_more_seeds_as_stages_of_its_own():
    from clipmemcap.core.config import add_run_arguments, run_and_seed
    import argparse
    import os

    cfg = load_config(ROOT / "params.yaml", ["finetune.more_seeds=[uniform-3, uniform-4, last-7]"])
    assert cfg.finetune.seeds_of("uniform") == (0, 1, 2, 3, 4) and cfg.finetune.seeds_of("mean") == (0, 1, 2)
    args = add_run_arguments(argparse.ArgumentParser(), "finetune").parse_args([])
    for stage, expected in (("finetune-more@uniform-3", ("uniform", 3)), ("finetune@last-1", ("last", 1))):
        os.environ["DVC_STAGE"] = stage
        try:
            assert run_and_seed(args, "finetune") == expected
        finally:
            del os.environ["DVC_STAGE"]


def test_the_memory_preset_runs_every_read_path_variant_its_hypotheses_name_on_the_studys_test_set(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    memory = apply_preset(tmp_path / "params.yaml", ROOT / "presets" / "memory.yaml")
    rep, runs = memory.report, memory.finetune.runs
    named = {run for h in rep.hypotheses.values() for run in (h.a, h.b)} | set(rep.references)
    named |= {run for pair in rep.comparisons.values() for run in pair}
    assert named <= set(runs) and {"memorizing", "uniform-64", "oracle", "all-frames"} <= set(runs)
    assert {"H5", "H6", "H7"} <= set(rep.hypotheses) and rep.hypotheses["H7"].clips == "control"
    assert memory.activitynet.subset.test_videos >= 250 and memory.finetune.train.patience
    assert len(memory.finetune.seeds) >= 3 and len(memory.finetune.seeds_of("all-frames")) >= 5
    overrides = {name: {**memory.finetune.mapper_overrides, **run.mapper_overrides} for name, run in runs.items()}
    for name, change in (("memorizing-oracle-read", {"retrieval": "oracle"}), ("memorizing-dense", {"retrieval": "dense"}),
                         ("memorizing-differentiable", {"differentiable": True}), ("memorizing-joint", {"combine": "joint"})):
        assert overrides[name] == {**overrides["memorizing"], **change}, name  # one change each
    assert overrides["memorizing-deep"]["layers"] == overrides["uniform-64-deep"]["layers"] == 4

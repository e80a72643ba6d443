import json
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT

CLI = [str(Path(sys.executable).parent / "clipmemcap")]


def run(args, check=True):
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_help_lists_the_commands():
    out = run(CLI + ["--help"]).stdout
    for command in ("config", "ingest", "synth", "synth-coco"):
        assert command in out
    for flow in ("flows.activitynet", "flows.coco"):
        assert "--set" in run([sys.executable, "-m", flow, "--help"]).stdout


def test_config_prints_resolved_settings_with_overrides():
    out = run(CLI + ["config", "--set", "activitynet.subset.train_videos=12"]).stdout
    assert json.loads(out)["activitynet"]["subset"]["train_videos"] == 12


def test_bad_override_exits_non_zero_naming_it():
    result = run(CLI + ["config", "--set", "clip.batchsize=3"], check=False)
    assert result.returncode != 0 and "batchsize" in result.stderr


def test_synth_writes_an_official_format_source(tmp_path):
    run(CLI + ["synth", str(tmp_path), "--train", "2", "--test", "1", "--max-duration", "4.5"])
    names = zipfile.ZipFile(tmp_path / "captions.zip").namelist()
    assert sorted(names) == ["train.json", "val_1.json", "val_2.json"]
    train = json.loads(zipfile.ZipFile(tmp_path / "captions.zip").read("train.json"))
    assert len(train) == 2 and all((tmp_path / "videos" / f"{v}.mp4").stat().st_size > 0 for v in train)


def test_synth_coco_writes_both_caption_formats(tmp_path):
    for fmt, name in (("karpathy", "caption_datasets.zip"), ("official", "annotations.zip")):
        run(CLI + ["synth-coco", str(tmp_path / fmt), "--images", "3", "--format", fmt])
        assert zipfile.is_zipfile(tmp_path / fmt / name)
        assert len(list((tmp_path / fmt / "images").rglob("*.jpg"))) == 3

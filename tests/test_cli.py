import json
import shutil
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


def project_copy(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    return (tmp_path / "params.yaml").read_text()


def one_line_error(args, cwd) -> str:
    result = subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_a_preset_name_is_a_name_or_a_yaml_file_and_a_bad_one_changes_nothing(tmp_path):
    params = project_copy(tmp_path)
    (tmp_path / "list.yaml").write_text("- clip\n- model\n")
    (tmp_path / "broken.yaml").write_text("clip: {model: [\n")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    (tmp_path / "evil.yaml").write_text('finetune: {runs: {"a;touch PWNED": {mapper: video-temporal}}}\n')
    for preset, words in (("../../etc/passwd", "no preset '../../etc/passwd'"), ("/etc/passwd", "no preset"),
                          ("notthere", "give a name in presets/ (activitynet, lengths, memory, study)"),
                          ("list.yaml", "preset list.yaml is not a mapping of settings (it holds a list)"),
                          ("broken.yaml", "preset broken.yaml is not valid YAML"),
                          ("zero.yaml", "no preset 'zero.yaml'"),  # a device, not a file: never read
                          ("evil.yaml", "run name 'a;touch PWNED' must be letters")):
        assert words in one_line_error(["preset", preset], tmp_path), preset
    assert (tmp_path / "params.yaml").read_text() == params and not list(tmp_path.glob("PWNED*"))


def test_invalid_settings_are_one_line_naming_each_setting():
    error = one_line_error(["config", "--set", "clip.batch_size=-1", "--set", "train.lr=1"], ROOT)
    assert "clip.batch_size: Input should be greater than or equal to 1" in error and "train: Extra inputs" in error

"""The data flow as a real DVC stage in a temporary git repository."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from clipmemcap.config import apply_overrides, load_config
from clipmemcap.synthetic import make_coco_source, make_source
from conftest import ROOT, ingest_overrides

pytestmark = pytest.mark.slow


def run(command, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_dvc_repro_runs_the_flows_and_caches_them(tmp_path, http_server, prefect_server):
    src = make_source(tmp_path / "src", n_train=3, n_test=1, min_duration=3, max_duration=5, seed=2)
    shutil.copytree(src.videos_dir, http_server.root / "videos")
    shutil.copy(src.zip_path, http_server.root / "captions.zip")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("clipmemcap", "flows"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    coco = make_coco_source(tmp_path / "coco", n_images=5)
    settings = ingest_overrides(http_server.url, Path("storage"), train=3, test=1) + [
        f"coco.captions_url={coco.captions_path}", f"coco.images_dir={coco.images_root}"]
    params = apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), settings)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    load_config(repo / "params.yaml")  # still valid settings
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)

    run(["dvc", "repro"], repo)
    out = repo / "storage" / "activitynet"
    assert len(pq.read_table(out / "segments" / "train.parquet").to_pandas().video_id.unique()) == 3
    assert len(list((out / "frames").glob("*.parquet"))) == 4
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {o["path"] for o in lock["stages"]["activitynet"]["outs"]}
    assert outs == {"storage/activitynet/frames", "storage/activitynet/segments",
                    "storage/activitynet/failures.parquet", "storage/activitynet/manifest.json"}
    assert len(pq.read_table(repo / "storage" / "coco" / "captions.parquet").to_pandas().image_id.unique()) == 5
    assert run(["dvc", "repro"], repo).count("didn't change") == 2
    # a parameter the stage depends on re-runs it
    params = apply_overrides(params, ["activitynet.subset.train_videos=2"])
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    status = run(["dvc", "status"], repo)
    assert "activitynet" in status and "coco" not in status  # only the stage that depends on it
    run(["dvc", "repro"], repo)
    assert len(list((out / "frames").glob("*.parquet"))) == 3


@pytest.mark.parametrize("stage,module", [("activitynet", "flows.activitynet"), ("coco", "flows.coco")])
def test_stage_deps_cover_every_project_module_the_flow_imports(stage, module):
    """A library change must re-run the stages whose outputs it can change."""
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() "
            "if n.split('.')[0] in ('clipmemcap', 'flows') and getattr(m, '__file__', None)))")
    files = run([sys.executable, "-c", code, module], ROOT).split()
    used = {str(Path(f).resolve().relative_to(ROOT)) for f in files if not f.endswith("__init__.py")}
    deps = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"])
    assert used - deps == set()
    assert all((ROOT / d).exists() for d in deps)

"""The whole DAG, as real DVC stages in a temporary git repository."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import clipmemcap.frames.clip_encoder  # noqa: F401  (registers the tiny CLIP configs with open_clip)
from clipmemcap.core.config import apply_overrides, load_config
from clipmemcap.model.prefix_lm import load_gpt2
from conftest import GPT2_TINY, ROOT, free_port

pytestmark = pytest.mark.slow


BIN = Path(sys.executable).parent


def run(command, cwd, env=None):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def dvc(*args, cwd):
    """``.venv/bin/dvc`` as the README runs it: from a shell whose PATH does not hold the venv
    (the stage commands must find the venv's python all the same)."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != BIN.resolve())
    return run([str(BIN / "dvc"), *args], cwd, env={**os.environ, "PATH": path})


def commit(repo, message):
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.email=test@example.invalid", "-c", "user.name=test", "commit", "-qm", message], repo)


# The benchmark, reduced for CI: fewer and shorter clips, one seed, short training.
REDUCED = [
    "activitynet.subset.train_videos=4", "activitynet.subset.test_videos=2", "activitynet.subset.val_fraction=0.25",
    "benchmark.long_s=[8.0, 20.0]", "benchmark.pretrain_images=60", "clip.device=cpu", "clip.batch_size=32",
    "pretrain.train.epochs=1", "pretrain.train.batch_size=8", "pretrain.train.device=cpu",
    "finetune.seeds=[0]", "finetune.train.epochs=2", "finetune.train.batch_size=4", "finetune.train.device=cpu",
    "evaluate.beam=2", "evaluate.max_tokens=12", "report.length_bin_s=6",
    "model.vocabulary=captions",  # the restricted output layer, through every stage and `caption`
    # the study's bound: 16 frames that show both events of each clip (the benchmark's event times)
    "finetune.runs.oracle={mapper: video-temporal, frames: oracle}",
    "finetune.more_seeds=[uniform-1]",  # an unstable run's further seed: stages of its own, pooled in the report
    # a further test set of longer clips (one video of 4), through the flows, every evaluation and the report
    "benchmark.test_lengths={long: [30.0, 40.0]}", "benchmark.length_test_videos=1", "report.length_reference=uniform",
    "report.length_hypotheses={L1: {claim: a memory beats uniform when long, a: [memorizing], b: uniform, lengths: [long]}}",
]


@pytest.mark.timeout(1800)  # about 12 minutes on 2 cores
def test_the_benchmark_dag_end_to_end_then_a_metrics_diff(tmp_path, prefect_server):
    """benchmark -> data flows -> pretrain -> finetune x runs -> evaluate x runs -> report, with
    dvc repro in a fresh git repository, offline, as the README's quickstart runs it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("clipmemcap", "flows"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # Pretrained weights cannot be downloaded here: the stages load real weights from disk, as a
    # user's would, saved by this test from the tiny configs.
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    torch.manual_seed(0)
    torch.save(open_clip.create_model(committed["clip"]["model"], pretrained=None).state_dict(), tmp_path / "clip.pt")
    load_gpt2(GPT2_TINY).save_pretrained(tmp_path / "gpt2")
    settings = REDUCED + [f"clip.pretrained={tmp_path / 'clip.pt'}", f"model.lm={tmp_path / 'gpt2'}"]
    params = apply_overrides(committed, settings)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = load_config(repo / "params.yaml")  # still valid settings
    run(["git", "init", "-q"], repo)
    dvc("init", "-q", cwd=repo)
    commit(repo, "pipeline")  # as in a clone; dvclive needs a commit to log against

    dvc("repro", cwd=repo)
    source = json.loads((repo / "storage" / "benchmark" / "source.json").read_text())
    assert source["videos"] == 4 + 1 + 2 + 1 and source["clips"] == 4 * 8 and source["images"] == 60
    segments = repo / "storage" / "activitynet" / "segments"
    assert [len(pq.read_table(segments / f"{split}.parquet")) for split in ("train", "val", "test", "test-long")] == [16, 4, 8, 4]
    assert len(pq.read_table(repo / "storage" / "coco" / "captions.parquet")) == 60
    runs = list(cfg.finetune.runs)
    assert runs == ["memorizing", "uniform", "last", "mean", "oracle"]
    for name in runs:
        trained = json.loads((repo / "storage" / "models" / "finetune" / f"{name}-0" / "best" / "mapper" / "config.json").read_text())
        assert trained["kind"] == ("memorizing" if name == "memorizing" else "temporal")
        assert trained["frame_policy"] == {"memorizing": "uniform", "oracle": "uniform"}.get(name, name)
        predictions = json.loads((repo / "storage" / "evaluation" / f"{name}-0" / "predictions.json").read_text())
        assert len(predictions) == json.loads((repo / "metrics" / "runs" / f"{name}-0.json").read_text())["clips"] == 8
        # the oracle sees at most its window of frames; the others every frame of a clip
        assert (max(r["frames"] for r in predictions) <= 16) == (name == "oracle")
        longer = json.loads((repo / "storage" / "evaluation" / f"{name}-0" / "predictions_test-long.json").read_text())
        assert len(longer) == 4 and all(30 <= r["end"] - r["start"] <= 40 for r in longer)
    lengths = json.loads((repo / "metrics" / "lengths.json").read_text())
    assert sorted(lengths) == sorted(runs) and all(list(v) == ["8-20s", "long"] for v in lengths.values())
    assert lengths["oracle"]["long"]["ceiling"] == 1.0 and "margin_vs_uniform_ci95" in lengths["memorizing"]["long"]
    more = json.loads((repo / "metrics" / "runs" / "uniform-1.json").read_text())
    assert more["clips"] == 8 and (repo / "storage" / "models" / "finetune" / "uniform-1" / "best" / "mapper").is_dir()
    shut = json.loads((repo / "storage" / "evaluation" / "memorizing-0" / "predictions_gate_shut.json").read_text())
    assert [(r["video_id"], r["segment"]) for r in shut] == [(r["video_id"], r["segment"]) for r in predictions]
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    assert sorted(summary) == sorted(runs + ["memorizing-gate-shut"])
    first = json.loads((repo / "metrics" / "runs" / "uniform-0.json").read_text())
    assert summary["uniform"]["bleu_4"] == pytest.approx((first["bleu_4"] + more["bleu_4"]) / 2)  # both seeds pooled
    # what the memory read, measured on the benchmark's event frames
    assert 0 <= summary["memorizing"]["retrieval_recall"] <= 1 and "retrieval_recall" not in summary["uniform"]
    assert summary["oracle"]["slot_accuracy_long_ceiling"] == 1.0
    for name, values in summary.items():
        assert 0 <= values["slot_accuracy_long"] <= 1 and 0 <= values["slot_accuracy_short"] <= 1
        assert {"bleu_4", "meteor", "cider_d", "slot_accuracy_long_margin"} <= values.keys()
        assert values["test_clips_long"] == values["test_clips_short"] == 4  # a fixed test set, half control clips
        assert (name == "memorizing") != ("slot_accuracy_long_margin_ci95" in values)
    for name in runs:  # model.vocabulary=captions: the output layer scores only the captions' tokens
        vocabulary = json.loads((repo / "storage" / "models" / "finetune" / f"{name}-0" / "best" / "vocabulary.json").read_text())
        assert 50256 in vocabulary and len(vocabulary) < 40  # the end-of-text token and the captions' few
    verdicts = json.loads((repo / "metrics" / "hypotheses.json").read_text())
    assert verdicts["H1"]["verdict"] in {"supported", "refuted", "inconclusive"} and verdicts["H4"]["verdict"] == "not run"
    assert verdicts["L1"]["verdict"] in {"supported", "refuted", "inconclusive"} and "long" in verdicts["L1"]["lengths"]
    table = (repo / "reports" / "results" / "results.md").read_text()
    assert all(f"| {name} |" in table for name in summary)
    plots = dvc("plots", "show", "--json", cwd=repo)  # drawn by the pipeline and by DVC from dvclive's logs
    for name in ("reports/results/plot.png", "reports/results/haystack.png", "reports/results/lengths.png", "reports/pretrain/plots/metrics/train/loss.tsv",
                 "reports/finetune/memorizing-0/plots/metrics/train/loss.tsv"):
        assert name in plots

    # `clipmemcap caption` with the pipeline's checkpoints gives the evaluate stage's captions
    with zipfile.ZipFile(repo / "storage" / "benchmark" / "captions.zip") as archive:
        annotations = json.loads(archive.read("val_1.json"))
    for name in ("memorizing", "uniform"):
        predictions = json.loads((repo / "storage" / "evaluation" / f"{name}-0" / "predictions.json").read_text())
        video = predictions[0]["video_id"]
        expected = [r["prediction"] for r in sorted((r for r in predictions if r["video_id"] == video),
                                                      key=lambda r: r["segment"])]
        spans = [f"{start}-{end}" for start, end in annotations[video]["timestamps"]]  # as annotated
        shown = json.loads(run([sys.executable, "-m", "clipmemcap.cli", "caption", f"storage/benchmark/videos/{video}.mp4",
                                "--checkpoint", f"storage/models/finetune/{name}-0", "--json", "--segments", *spans], repo))
        assert [c["sentence"] for c in shown["results"][video]] == expected, name
        # the run exported to share gives the same captions; nothing in it is pickled
        exported = repo / "storage" / "captioners" / f"{name}-0"
        shown = json.loads(run([sys.executable, "-m", "clipmemcap.cli", "caption", f"storage/benchmark/videos/{video}.mp4",
                                "--checkpoint", str(exported), "--json", "--segments", *spans], repo))
        assert [c["sentence"] for c in shown["results"][video]] == expected, name
        files = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
        assert {"README.md", "captioner.json", "clip.json", "mapper/model.safetensors", "gpt2/model.safetensors",
                "tokenizer/vocab.json", "tokenizer/merges.txt", "provenance.json", "metrics.json"} <= files
        assert all(f.endswith((".json", ".safetensors", ".txt", ".md")) for f in files), files
        card = (exported / "README.md").read_text()
        metrics = json.loads((repo / "metrics" / "runs" / f"{name}-0.json").read_text())
        assert f"| bleu_4 | {metrics['bleu_4']:.4f} |" in card and "activitynet-captions" in card
        provenance = json.loads((exported / "provenance.json").read_text())
        assert provenance["video_ids"]["test"] == sorted({r["video_id"] for r in predictions})

    stages = 4 + 2 * len(runs) + 2 + 1  # and the further seed's two
    assert dvc("repro", cwd=repo).count("didn't change") == stages  # everything cached
    # the CLI's help, COCO's caption parser and the report are no dependency of training or evaluation
    for edited in ("clipmemcap/cli.py", "clipmemcap/sources/coco.py", "clipmemcap/results/report.py"):
        original = (repo / edited).read_text()
        (repo / edited).write_text(original + "\n# an edit\n")
        status = dvc("status", cwd=repo)
        assert "finetune@" not in status and "evaluate@" not in status and "pretrain" not in status, (edited, status)
        (repo / edited).write_text(original)
    changed = apply_overrides(yaml.safe_load((repo / "params.yaml").read_text()), ["evaluate.beam=1"])
    (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    status = dvc("status", cwd=repo)
    assert all(f"evaluate@{name}-0" in status for name in runs)  # the report follows when they re-run
    assert not any(s in status for s in ("benchmark", "activitynet", "coco", "pretrain", "finetune"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))  # back to what ran

    # the README's comparison: a run against the committed results
    commit(repo, "results")
    greedy = dvc("exp", "run", "-n", "greedy", "-S", "evaluate.beam=1", cwd=repo)
    assert "Running stage 'evaluate@memorizing-0'" in greedy and "Running stage 'finetune" not in greedy
    diff = json.loads(dvc("metrics", "diff", "HEAD", "greedy", "--all", "--json", cwd=repo))
    for name in runs:
        for metric in ("slot_accuracy_long", "bleu_4", "cider_d"):
            values = diff["metrics/summary.json"][f"{name}.{metric}"]
            assert isinstance(values["old"], float) and isinstance(values["new"], float), values

    # the README's comparison of the baseline with the memorizing run, as named experiments
    run(["git", "checkout", "-q", "--", "."], repo)
    dvc("checkout", "-f", cwd=repo)
    baseline = dvc("exp", "run", "-n", "baseline", "-S", "report.run=uniform", cwd=repo)
    assert "Running stage 'report'" in baseline and "Running stage 'finetune" not in baseline
    dvc("exp", "run", "-n", "memorizing", "-S", "report.run=memorizing", cwd=repo)
    diff = json.loads(dvc("metrics", "diff", "baseline", "memorizing", "--all", "--json", cwd=repo))
    lined_up = diff["metrics/run.json"]
    assert set(lined_up) == set(summary["memorizing"]) >= {"slot_accuracy_long", "slot_accuracy_short", "bleu_4",
                                                           "meteor", "rouge_l", "cider_d"}
    for metric, values in lined_up.items():  # what only a memory has (retrieval_*) is missing from the baseline
        assert values.get("old") == summary["uniform"].get(metric) and values["new"] == summary["memorizing"][metric], metric
    assert all(v["old"] == v["new"] for v in diff["metrics/summary.json"].values())  # the same runs in both
    shown = dvc("metrics", "diff", "baseline", "memorizing", "--all", cwd=repo)  # the table a user reads
    assert "metrics/run.json" in shown and "slot_accuracy_long " in shown


STAGE_MODULES = [("sources", "clipmemcap.sources.remote"), ("benchmark", "clipmemcap.sources.benchmark"),
                 ("activitynet", "flows.activitynet"),
                 ("coco", "flows.coco"), ("pretrain", "clipmemcap.training.stages"),
                 ("finetune", "clipmemcap.training.stages"), ("evaluate", "clipmemcap.evaluation.evaluate"),
                 ("report", "clipmemcap.results.report")]


def stage_deps(stage: str) -> list[str]:
    definition = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    return definition.get("do", definition)["deps"]  # a foreach stage's are in its body


@pytest.mark.parametrize("stage,module", STAGE_MODULES)
def test_stage_deps_cover_every_project_module_the_stage_imports(stage, module):
    """A library change must re-run the stages whose outputs it can change."""
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() "
            "if n.split('.')[0] in ('clipmemcap', 'flows') and getattr(m, '__file__', None)))")
    files = run([sys.executable, "-c", code, module], ROOT).split()
    used = {Path(f).resolve().relative_to(ROOT) for f in files}
    deps = [Path(d) for d in stage_deps(stage) if not d.startswith(("${", "metrics/"))]
    uncovered = {str(f) for f in used if not any(f == d or d in f.parents for d in deps)}
    assert uncovered <= {"clipmemcap/__init__.py", "flows/__init__.py"}, uncovered
    assert all((ROOT / d).exists() for d in deps)


def test_the_cli_caption_parsing_and_the_report_are_no_dependency_of_training_or_evaluation():
    """Editing the CLI's help text, COCO's caption parser or the report must not re-run the 12
    fine-tuning and evaluation stages: they are outside every folder those stages depend on."""
    for stage in ("pretrain", "finetune", "evaluate"):
        deps = [Path(d) for d in stage_deps(stage) if not d.startswith("${")]
        for edited in ("clipmemcap/cli.py", "clipmemcap/caption.py", "clipmemcap/sources/coco.py",
                       "clipmemcap/results/report.py", "flows/coco.py"):
            assert not any(Path(edited) == d or d in Path(edited).parents for d in deps), (stage, edited)


SHELL_WORDS = ["x;touch PWNED1;y", "$(touch PWNED2)", "`touch PWNED3`"]


def project_repo(tmp_path, params: dict) -> Path:
    """The project's DAG in a fresh git repository, two folders below ``tmp_path``, with ``params``."""
    repo = tmp_path / "repo" / "deeper"
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("clipmemcap", "flows", "presets"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    dvc("init", "-q", cwd=repo)
    return repo


def hostile_repo(tmp_path, runs: list[str]) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["finetune"]["runs"] = {name: {"mapper": "video-temporal"} for name in runs}
    params["finetune"]["seeds"] = [0]
    return project_repo(tmp_path, params)


def dvc_fails(*args, cwd) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != BIN.resolve())
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, "PATH": path})
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def test_run_names_never_reach_a_shell(tmp_path):
    """A run name in params.yaml (or a preset) is input: dvc.yaml's commands do not carry it (the
    stages read it from DVC_STAGE), and the `sources` stage, upstream of every stage, checks the
    settings and stops the run before DVC acts on any path built from them."""
    repo = hostile_repo(tmp_path, SHELL_WORDS)
    done = dvc_fails("repro", cwd=repo)
    assert "Running stage 'sources'" in done.stdout and "Running stage 'benchmark" not in done.stdout
    assert len([line for line in done.stderr.splitlines() if "run name" in line]) == 1, done.stderr
    for dep in ("models/pretrain/x", "activitynet/frames/x", "activitynet/segments/x", "activitynet/manifest.json"):
        (repo / "storage" / dep).parent.mkdir(parents=True, exist_ok=True)  # what lets the stage start
        (repo / "storage" / dep).write_text("{}")
    for name in SHELL_WORDS:  # one stage run on its own (dvc repro -s): past the check, still no shell word
        done = dvc_fails("repro", "-s", f"finetune@{name}-0", cwd=repo)
        assert "> python -m clipmemcap.training finetune\n" in done.stdout and "run name" in done.stderr
    assert not list(tmp_path.rglob("PWNED*"))
    commands = [d.get("do", d)["cmd"] for d in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values()]
    assert not any("${item" in command for command in commands)


@pytest.mark.parametrize("where", ["runs", "more_seeds"])
def test_a_run_name_that_leads_out_of_the_repository_deletes_nothing(tmp_path, where):
    """DVC deletes a stage's outputs before it runs it: a run named ../../../../outside/evil would
    make the evaluate stage's outputs a folder beside the repository; so would a seed of
    finetune.more_seeds (finetune-more@<run>-<seed>)."""
    if where == "runs":
        repo = hostile_repo(tmp_path, ["../../../../outside/evil"])
    else:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["finetune"]["more_seeds"] = ["../../../../outside/evil-0"]
        repo = project_repo(tmp_path, params)
    outside = tmp_path / "outside" / "evil-0"
    outside.mkdir(parents=True)
    (outside / "keep.txt").write_text("the user's\n")
    dvc_fails("repro", cwd=repo)
    assert (outside / "keep.txt").read_text() == "the user's\n"


def test_the_real_preset_offline_stops_first_with_one_line_that_says_what_and_how(tmp_path):
    """`clipmemcap preset activitynet && dvc repro` without the internet: no benchmark stage (its
    sources are unused by the real experiment), and the first stage says which source it could not
    reach and how to run offline. The internet cannot be reached here anyway; the annotation and
    caption URLs are pointed at a closed port on 127.0.0.1 so that the test means the same on a
    machine that has it."""
    repo = project_repo(tmp_path, yaml.safe_load((ROOT / "params.yaml").read_text()))
    run([str(BIN / "clipmemcap"), "preset", "activitynet"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["benchmark"]["build"] == [] and params["activitynet"]["annotations_url"].startswith("https://")
    closed = f"http://127.0.0.1:{free_port()}"
    (repo / "params.yaml").write_text(yaml.safe_dump(apply_overrides(params, [
        f"activitynet.annotations_url={closed}/captions.zip", f"coco.captions_url={closed}/caption_datasets.zip"]),
        sort_keys=False))
    assert "benchmark" not in dvc("stage", "list", cwd=repo)
    done = dvc_fails("repro", cwd=repo)
    assert "Running stage 'sources'" in done.stdout and "Running stage" not in done.stdout.replace("Running stage 'sources'", "")
    ours = [line for line in done.stderr.splitlines() if line.startswith("python -m clipmemcap.sources.remote:")]
    assert len(ours) == 1, done.stderr
    assert f"cannot reach activitynet.annotations_url: {closed}/captions.zip" in ours[0] and "offline, set" in ours[0]
    assert not (repo / "storage" / "benchmark").exists()

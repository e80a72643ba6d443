"""``clipmemcap`` command line: one subcommand per user-facing job."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
from pathlib import Path


def _config(args):
    from clipmemcap.core.config import load_config

    return load_config(args.params, args.overrides)


PRESETS = Path("presets")


def preset_file(name: str) -> Path:
    """``presets/<name>.yaml`` for a plain name, or a ``.yaml`` file given by its path; nothing
    else is read (a name like ``../../etc/passwd`` is neither)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name) and (PRESETS / f"{name}.yaml").is_file():
        return PRESETS / f"{name}.yaml"
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)
    known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml"))) or "none here"
    raise ValueError(f"no preset {name[:100]!r}: give a name in {PRESETS}/ ({known}) or the path of a .yaml file")


def cmd_preset(args) -> None:
    from clipmemcap.core.config import apply_preset

    preset = preset_file(args.preset)
    apply_preset(Path(args.params), preset)
    print(f"wrote {preset} into {args.params}")


def cmd_config(args) -> None:
    print(json.dumps(_config(args).model_dump(mode="json"), indent=2))


def cmd_synth(args) -> None:
    from clipmemcap.sources.synthetic import make_activitynet_source

    source = make_activitynet_source(Path(args.out), n_train=args.train, n_test=args.test, min_duration=args.min_duration,
                         max_duration=args.max_duration, seed=args.seed)
    print(f"wrote {args.train + args.test} videos to {source.videos_dir} and annotations to {source.zip_path}")


def cmd_ingest(args) -> None:
    if args.dataset == "activitynet":
        from flows.activitynet import activitynet_ingest as ingest
    else:
        from flows.coco import coco_ingest as ingest
    manifest = ingest(params=args.params, overrides=args.overrides)
    print(json.dumps(manifest["counts"], indent=2))


STAGES = {"benchmark": "clipmemcap.sources.benchmark", "pretrain": "clipmemcap.training.stages",
          "finetune": "clipmemcap.training.stages", "evaluate": "clipmemcap.evaluation.evaluate",
          "report": "clipmemcap.results.report"}


def cmd_stage(args) -> None:
    """A DVC stage's own command (``python -m ...``, see dvc.yaml), by its stage name."""
    argv = [args.command] if args.command in ("pretrain", "finetune") else []
    argv += ["--params", args.params, *(f"--set={o}" for o in args.overrides)]
    if args.command in ("finetune", "evaluate"):
        argv += ["--run", args.run, "--seed", str(args.seed)]
    importlib.import_module(STAGES[args.command]).main(argv)


def cmd_caption(args) -> None:
    from clipmemcap.caption import caption_video, timestamp
    from clipmemcap.evaluation.metrics import dense_captioning_results

    rows = caption_video(args.source, _config(args), Path(args.checkpoint) if args.checkpoint else None,
                         args.segments, args.window)
    if args.json:
        print(json.dumps(dense_captioning_results(list(rows)), indent=2))
        return
    for row in rows:
        print(f"{timestamp(row['start'])} - {timestamp(row['end'])}  {row['caption']}", flush=True)


def cmd_subset(args) -> None:
    from clipmemcap.core.atomic import atomic_path
    from clipmemcap.core.layout import Layout, read_manifest
    from clipmemcap.sources.activitynet import download_annotations, subset_annotations

    cfg = _config(args)
    paths, download = Layout.of(cfg).activitynet, cfg.activitynet.download
    manifest = read_manifest(paths.out)
    if "video_ids" not in manifest:
        raise ValueError(f"{paths.out / 'manifest.json'} lists no video ids (made by an older version): run the "
                         "activitynet flow again")
    files = subset_annotations(download_annotations(cfg.activitynet.annotations_url, paths.annotations,
                                                    download.socket_timeout_s, download.deadline_s),
                               manifest["video_ids"])
    if args.out is None:
        print(json.dumps(files, indent=2))
        return
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder")
    contents = {**files, "splits.json": manifest["video_ids"]}
    taken = [name for name in contents if os.path.lexists(out / name)]
    if taken and not args.force:
        raise ValueError(f"{out} already holds {', '.join(taken)}: choose another folder, or pass --force to replace them")
    for name, data in contents.items():
        with atomic_path(out / name) as tmp:  # replaces a file (or a link) whole, never writes through it
            tmp.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {', '.join(f'{name} ({len(entries)} videos)' for name, entries in files.items())} to {out}")


def cmd_synth_coco(args) -> None:
    from clipmemcap.sources.synthetic import make_coco_source

    source = make_coco_source(Path(args.out), n_images=args.images, fmt=args.format, seed=args.seed)
    print(f"wrote {args.images} images under {source.images_root} and captions to {source.captions_path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipmemcap", description="ClipCap + Memorizing-Transformer video captioning.")
    sub = parser.add_subparsers(dest="command", required=True)

    from clipmemcap.core.config import add_settings_arguments as with_settings

    with_settings(sub.add_parser("config", help="print the resolved settings")).set_defaults(func=cmd_config)
    preset = sub.add_parser("preset", help="write a preset's settings into the settings file (e.g. activitynet: "
                            "the real experiment)")
    preset.add_argument("preset", help="a name in presets/ (activitynet) or a preset file")
    preset.add_argument("--params", default="params.yaml", help="the settings file to update (default: params.yaml)")
    preset.set_defaults(func=cmd_preset)
    with_settings(sub.add_parser("benchmark", help="write the long-range benchmark's videos, images and captions "
                                 "under <storage.root>/benchmark")).set_defaults(func=cmd_stage)
    with_settings(sub.add_parser("pretrain", help="pre-train the image mapper (and GPT-2) on COCO")).set_defaults(func=cmd_stage)
    for stage, text in (("finetune", "fine-tune one run on ActivityNet, starting from the pre-trained weights"),
                        ("evaluate", "caption the test clips with one run's model and score them")):
        p = with_settings(sub.add_parser(stage, help=text))
        p.add_argument("--run", required=True, help="a run of finetune.runs, e.g. memorizing")
        p.add_argument("--seed", type=int, required=True, help="training seed (one of finetune.seeds)")
        p.set_defaults(func=cmd_stage)
    with_settings(sub.add_parser("report", help="gather every run's evaluation: metrics/summary.json, "
                                 "reports/results/")).set_defaults(func=cmd_stage)
    caption = with_settings(sub.add_parser(
        "caption", help="caption a video file or URL with a fine-tuned model",
        description="Caption a video's segments with a fine-tuned run: one line per segment (start - end, "
                    "caption), or --json in the dense-captioning format the evaluate stage writes. Streams: "
                    "memory use does not grow with the video's length."))
    caption.add_argument("source", help="a video file, or a URL yt-dlp can fetch")
    which = caption.add_mutually_exclusive_group()
    which.add_argument("--segments", nargs="+", metavar="START-END", help="segments in seconds, e.g. 0-30 42.5-60")
    which.add_argument("--window", type=float, metavar="SECONDS", help="consecutive fixed windows, e.g. 30")
    caption.add_argument("--checkpoint", help="an exported captioner (storage/captioners/<run>-<seed>) or a "
                         "fine-tuning run folder (storage/models/finetune/<run>-<seed>); default: the latest run")
    caption.add_argument("--json", action="store_true", help="print JSON instead of lines")
    caption.set_defaults(func=cmd_caption)
    subset = with_settings(sub.add_parser(
        "subset", help="the ActivityNet videos the ingested dataset used, in the annotation files' format",
        description="Write train.json, val_1.json and val_2.json restricted to the videos the ingested dataset "
                    "used (its manifest's video ids; entries unchanged), and splits.json (the ids per split), so "
                    "that others can reproduce the same subset: a zip of the three files as "
                    "activitynet.annotations_url, with subset.train_videos and test_videos at the counts used, "
                    "ingests the same videos (the train/val division is drawn again from subset.seed)."))
    subset.add_argument("--out", help="a folder for the three files (default: print them as one JSON object); "
                        "files already there are left alone unless --force")
    subset.add_argument("--force", action="store_true", help="replace train.json, val_1.json, val_2.json and "
                        "splits.json if --out already holds them")
    subset.set_defaults(func=cmd_subset)
    ingest = with_settings(sub.add_parser("ingest", help="run a data flow (same as python -m flows.<dataset>)"))
    ingest.add_argument("dataset", choices=["activitynet", "coco"])
    ingest.set_defaults(func=cmd_ingest)

    synth = sub.add_parser("synth", help="write a synthetic ActivityNet-format source (mp4 videos + captions.zip)")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--train", type=int, default=8, help="videos in train.json")
    synth.add_argument("--test", type=int, default=4, help="videos in val_1.json (and val_2.json)")
    synth.add_argument("--min-duration", type=float, default=4.0, help="seconds")
    synth.add_argument("--max-duration", type=float, default=12.0, help="seconds")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_synth)

    coco = sub.add_parser("synth-coco", help="write a synthetic COCO-format source (JPEG images + caption zip)")
    coco.add_argument("out", help="output folder")
    coco.add_argument("--images", type=int, default=12)
    coco.add_argument("--format", choices=["karpathy", "official"], default="karpathy")
    coco.add_argument("--seed", type=int, default=0)
    coco.set_defaults(func=cmd_synth_coco)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from clipmemcap.core.errors import reported

    with reported(f"clipmemcap {args.command}"):
        args.func(args)


if __name__ == "__main__":
    main()

"""``clipmemcap`` command line: one subcommand per user-facing job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _config(args):
    from clipmemcap.config import load_config

    return load_config(args.params, args.overrides)


def cmd_config(args) -> None:
    print(json.dumps(_config(args).model_dump(mode="json"), indent=2))


def cmd_synth(args) -> None:
    from clipmemcap.synthetic import make_source

    source = make_source(Path(args.out), n_train=args.train, n_test=args.test, min_duration=args.min_duration,
                         max_duration=args.max_duration, seed=args.seed)
    print(f"wrote {args.train + args.test} videos to {source.videos_dir} and annotations to {source.zip_path}")


def cmd_ingest(args) -> None:
    if args.dataset == "activitynet":
        from flows.activitynet import activitynet_ingest as ingest
    else:
        from flows.coco import coco_ingest as ingest
    manifest = ingest(params=args.params, overrides=args.overrides)
    print(json.dumps(manifest["counts"], indent=2))


def cmd_stage(args) -> None:
    from clipmemcap import pipeline

    run = {"run": args.run, "seed": args.seed} if args.command in ("finetune", "evaluate") else {}
    result = getattr(pipeline, args.command)(_config(args), **run)
    print(json.dumps(result, indent=2))


def cmd_report(args) -> None:
    from clipmemcap.report import REPORT_DIR, report

    report(_config(args))
    print((REPORT_DIR / "results.md").read_text())


def cmd_benchmark(args) -> None:
    from clipmemcap.long_range import make_source

    cfg = _config(args)
    summary = make_source(cfg.benchmark, cfg.activitynet.subset, cfg.storage.root / "benchmark")
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=2))


def cmd_caption(args) -> None:
    from clipmemcap.caption import caption_video, timestamp
    from clipmemcap.evaluation import dense_captioning_results

    rows = caption_video(args.source, _config(args), Path(args.checkpoint) if args.checkpoint else None,
                         args.segments, args.window)
    if args.json:
        print(json.dumps(dense_captioning_results(list(rows)), indent=2))
        return
    for row in rows:
        print(f"{timestamp(row['start'])} - {timestamp(row['end'])}  {row['caption']}", flush=True)


def cmd_synth_coco(args) -> None:
    from clipmemcap.synthetic import make_coco_source

    source = make_coco_source(Path(args.out), n_images=args.images, fmt=args.format, seed=args.seed)
    print(f"wrote {args.images} images under {source.images_root} and captions to {source.captions_path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipmemcap", description="ClipCap + Memorizing-Transformer video captioning.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_settings(p):
        p.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting, e.g. activitynet.subset.train_videos=20 (repeatable)")
        return p

    with_settings(sub.add_parser("config", help="print the resolved settings")).set_defaults(func=cmd_config)
    with_settings(sub.add_parser("benchmark", help="write the long-range benchmark's videos, images and captions "
                                 "under <storage.root>/benchmark")).set_defaults(func=cmd_benchmark)
    with_settings(sub.add_parser("pretrain", help="pre-train the image mapper (and GPT-2) on COCO")).set_defaults(func=cmd_stage)
    for stage, text in (("finetune", "fine-tune one run on ActivityNet, starting from the pre-trained weights"),
                        ("evaluate", "caption the test clips with one run's model and score them")):
        p = with_settings(sub.add_parser(stage, help=text))
        p.add_argument("--run", required=True, help="a run of finetune.runs, e.g. memorizing")
        p.add_argument("--seed", type=int, required=True, help="training seed (one of finetune.seeds)")
        p.set_defaults(func=cmd_stage)
    with_settings(sub.add_parser("report", help="gather every run's evaluation: metrics/summary.json, "
                                 "reports/results/")).set_defaults(func=cmd_report)
    caption = with_settings(sub.add_parser(
        "caption", help="caption a video file or URL with a fine-tuned model",
        description="Caption a video's segments with a fine-tuned run: one line per segment (start - end, "
                    "caption), or --json in the dense-captioning format the evaluate stage writes. Streams: "
                    "memory use does not grow with the video's length."))
    caption.add_argument("source", help="a video file, or a URL yt-dlp can fetch")
    which = caption.add_mutually_exclusive_group()
    which.add_argument("--segments", nargs="+", metavar="START-END", help="segments in seconds, e.g. 0-30 42.5-60")
    which.add_argument("--window", type=float, metavar="SECONDS", help="consecutive fixed windows, e.g. 30")
    caption.add_argument("--checkpoint", help="a fine-tuning run folder (storage/models/finetune/<run>-<seed>); "
                         "default: the latest one")
    caption.add_argument("--json", action="store_true", help="print JSON instead of lines")
    caption.set_defaults(func=cmd_caption)
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
    from clipmemcap.decode import DecodeError
    from clipmemcap.fetch import DownloadError

    try:
        args.func(args)
    except (ValueError, FileNotFoundError, DecodeError, DownloadError) as err:
        sys.exit(f"clipmemcap {args.command}: {err}")


if __name__ == "__main__":
    main()

"""A fine-tuned run as one folder to share: its weights, configs, tokenizer and CLIP settings, and a
model card holding its evaluation and the data it was trained on. The evaluate stage writes one
per run and seed (``<root>/captioners/<run>-<seed>/``); ``clipmemcap caption --checkpoint FOLDER``
captions with it. Nothing in it is pickled: weights are safetensors, the rest JSON and text.

    README.md                 the model card (metrics, data provenance, how to use it)
    captioner.json            format version, run, seed, decoding settings, the tokenizer's source
    clip.json                 the CLIP settings of the frames it was trained on (fps included)
    mapper/                   config.json + model.safetensors
    gpt2/                     config.json + model.safetensors (transformers' save_pretrained)
    vocabulary.json           the token ids the output layer scores (restricted vocabulary only)
    tokenizer/                vocab.json + merges.txt (GPT-2's, unchanged)
    provenance.json           the dataset's source, subset, counts, video ids per split, tool versions
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from clipmemcap.core.atomic import write_json
from clipmemcap.core.config import Config
from clipmemcap.core.layout import CAPTIONER, CLIP_SETTINGS, Layout, read_manifest, run_name
from clipmemcap.model.captioner import CAPTIONER_FORMAT, load_caption_model
from clipmemcap.training.loop import save_weights

CARD_METRICS = ("bleu_4", "meteor", "rouge_l", "cider_d", "protocol_bleu_3", "protocol_bleu_4", "protocol_meteor",
                "protocol_cider")


def _card(cfg: Config, run: str, seed: int, metrics: dict, provenance: dict, mapper: dict) -> str:
    name = run_name(run, seed)
    rows = [f"| {key} | {metrics[key]:.4f} |" for key in CARD_METRICS if key in metrics]
    counts = provenance.get("counts", {})
    tools = ", ".join(f"{tool} {value or 'none'}" for tool, value in provenance.get("tools", {}).items())
    return "\n".join([
        "---",
        "library_name: clipmemcap",
        "tags: [video-captioning, clipcap, memorizing-transformer, gpt2, clip]",
        f"datasets: [{provenance.get('dataset', 'unknown')}]",
        "---",
        "",
        f"# ClipMemCap captioner `{name}`",
        "",
        f"A ClipCap-style video captioner: CLIP {cfg.clip.model} frame embeddings ({provenance['clip'].get('fps', '?')} "
        f"fps) -> a `{mapper['kind']}` mapper ({mapper['layers']} layers of {mapper['embed_dim']}, window "
        f"{mapper['window']}) -> a prefix of {mapper['prefix_length']} embeddings -> GPT-2, fine-tuned as run `{run}` with seed "
        f"{seed} of the ClipMemCap pipeline.",
        "",
        "## Use",
        "",
        "```",
        "clipmemcap caption --checkpoint THIS_FOLDER video.mp4 --segments 0-30 30-60",
        "```",
        "",
        "Frames must come from the CLIP in `clip.json` (the command checks it). Loading reads safetensors "
        "and JSON only.",
        "",
        "## Evaluation",
        "",
        f"On the {metrics.get('clips', '?')} test clips of its dataset; caption metrics corpus-level "
        "(pycocoevalcap), `protocol_*`: ActivityNet's official protocol (val_1 + val_2, tIoU 0.3-0.9).",
        "",
        "| metric | value |",
        "|---|---|",
        *rows,
        "",
        "All metrics: `metrics.json`.",
        "",
        "## Data",
        "",
        f"- dataset: {provenance.get('dataset')} ({provenance.get('annotations_url')})",
        f"- videos per split: {counts.get('videos')}; segments: {counts.get('segments')}",
        f"- subset: {provenance.get('subset')}",
        f"- tools: {tools}",
        "- the video ids of each split: `provenance.json`",
        "",
        "## Limitations",
        "",
        "Trained on the videos listed in `provenance.json` only; captions describe what CLIP's frames show, "
        "at the fps above.",
        "",
    ])


def export_captioner(cfg: Config, run: str, seed: int, metrics: dict) -> Path:
    """Write the run's shareable folder (replacing an earlier one); returns it."""
    layout = Layout.of(cfg)
    source, out = layout.finetune(run, seed), layout.captioner(run, seed)
    model, tokenizer = load_caption_model(cfg, source)
    manifest = read_manifest(layout.activitynet.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "weights")  # mapper/, gpt2/ (a loaded GPT-2 is never frozen), vocabulary.json
    for part in (tmp / "weights").iterdir():
        part.rename(tmp / part.name)
    (tmp / "weights").rmdir()
    (tmp / "tokenizer").mkdir()
    tokenizer.backend_tokenizer.model.save(str(tmp / "tokenizer"))  # vocab.json + merges.txt
    shutil.copyfile(source / CLIP_SETTINGS, tmp / CLIP_SETTINGS)
    write_json(tmp / CAPTIONER, {"format": CAPTIONER_FORMAT, "run": run, "seed": seed, "tokenizer_source": str(cfg.model.tokenizer),
                                 "decoding": cfg.evaluate.model_dump(mode="json", include={"beam", "max_tokens",
                                                                                           "stop_at_period"})})
    provenance = {key: manifest.get(key) for key in ("dataset", "annotations_url", "clip", "fps", "subset", "counts",
                                                     "video_ids", "tools")}
    write_json(tmp / "provenance.json", provenance)
    write_json(tmp / "metrics.json", metrics)
    mapper = json.loads((tmp / "mapper" / "config.json").read_text())
    (tmp / "README.md").write_text(_card(cfg, run, seed, metrics, provenance, mapper))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out

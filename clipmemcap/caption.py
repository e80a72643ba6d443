"""Caption any video with a fine-tuned model: ``clipmemcap caption PATH_OR_URL``.

The pipeline's own parts do the work: yt-dlp for URLs (:func:`clipmemcap.download.fetch_video`),
ffmpeg on the fps grid (:func:`clipmemcap.frames.ffmpeg_frames.decode_range`), CLIP through the embedding
pipeline (decoding ahead of CLIP), the run's mapper and GPT-2, beam search. A clip streams
through in pieces: each piece is decoded, embedded and fed to the mapper (``mapper.stream``; the
memorizing mapper keeps its kNN memory across pieces), so memory use does not grow with the
clip's length. Embeddings are rounded to the dataset's storage dtype first, exactly as the model
saw its training and test frames, so a test clip gets the caption the evaluate stage wrote.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from tqdm import tqdm

from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.core.config import MAX_URL, Config
from clipmemcap.frames.ffmpeg_frames import decode_range
from clipmemcap.model.beam import beam_search, captions
from clipmemcap.sources.video_download import fetch_video, probe_video
from clipmemcap.core.failures import Failure
from clipmemcap.sources.http import DownloadError, PermanentDownloadError, is_local
from clipmemcap.core.grid import grid_range
from clipmemcap.frames.embed import embed_stream, encoder_settings
from clipmemcap.core.layout import CLIP_SETTINGS, Layout, fits_file_system
from clipmemcap.core.redact import redact
from clipmemcap.core.jsonio import read_json
from clipmemcap.model.captioner import load_caption_model, stop_ids
from clipmemcap.model.safe_loading import MAX_CONFIG_BYTES

PIECE_FRAMES = 256  # frames decoded per piece of a clip: what streams through at once, per decoder


class CaptionError(ValueError):
    """Bad input to ``clipmemcap caption``; the message names it (a URL without its secrets)."""

    def __init__(self, message: str):
        super().__init__(redact(message))


@dataclass(frozen=True)
class Piece:
    segment: int
    start: float  # the segment's start (s)
    frames: range  # grid frames of this piece


def latest_checkpoint(cfg: Config) -> Path:
    """The most recently trained fine-tuning run folder."""
    root = Layout.of(cfg).finetune_runs
    runs = sorted(root.glob(f"*/{CLIP_SETTINGS}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise CaptionError(f"no fine-tuned model under {root}: run `dvc repro` (or `python -m clipmemcap.training finetune`) "
                           "first, or pass --checkpoint")
    return runs[-1].parent


def check_clip(checkpoint: Path, encoder: ClipEncoder, cfg: Config) -> None:
    """Refuse a checkpoint trained on frames of another CLIP (model, weights, size, dtype, fps)."""
    record = checkpoint / CLIP_SETTINGS
    if not record.is_file():
        raise CaptionError(f"{checkpoint} is not a fine-tuning run of this pipeline (no {CLIP_SETTINGS})")
    trained = read_json(record, MAX_CONFIG_BYTES, "CLIP settings file")
    current = encoder_settings(encoder, cfg.clip.embedding_dtype, fps=cfg.activitynet.fps)
    differ = {k: (trained.get(k), current.get(k)) for k in sorted(set(trained) | set(current))
              if trained.get(k) != current.get(k)}
    if differ:
        listed = "; ".join(f"{k}: trained {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise CaptionError(f"{checkpoint} was trained on frames of another CLIP than the configured one ({listed}); "
                           "use the settings it was trained with (--params/--set clip.*)")


def video_name(source: str) -> str:
    """A file-name-safe id: the file's stem, or the URL's ``v=`` parameter or last path part."""
    if is_local(source):
        return Path(source).stem
    url = urlparse(source)
    name = parse_qs(url.query).get("v", [Path(url.path).stem])[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "video"  # download_name's digest keeps it unique


def download_name(url: str) -> str:
    """The cached download's name: the video's name and a digest of the whole URL, so that two
    URLs ending in the same file name (``.../a/clip.mp4``, ``.../b/clip.mp4``) are two videos."""
    return f"{video_name(url)}-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def open_video(source: str, cfg: Config) -> tuple[Path, float]:
    """(local file, duration in s) of a path or a URL (downloaded with the pipeline's yt-dlp settings)."""
    if is_local(source):
        path = fits_file_system(source, "video file")
        if not path.is_file():
            raise CaptionError(f"no such video file: {source}")
    else:
        if len(source) > MAX_URL:
            raise CaptionError(f"the URL {source[:60]}... is longer than {MAX_URL} characters")
        try:
            path = fetch_video(download_name(source), source, Layout.of(cfg).caption_downloads, cfg.activitynet.download)
        except DownloadError as err:
            raise CaptionError(f"could not download {source}: {err}") from None
    try:
        return path, probe_video(path, cfg.activitynet.download)
    except PermanentDownloadError as err:
        raise CaptionError(f"{source} is not a readable video: {err}") from None


MAX_SEGMENTS = 100_000  # a 24-hour video in 1-second windows; --window 1e-6 asked for 10^7


def plan_segments(duration: float, spans: list[str] | None, window: float | None) -> list[tuple[float, float]]:
    """``START-END`` strings (seconds), fixed windows of ``window`` s, or the whole video."""
    if spans:
        segments = []
        for text in spans:
            match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*", text)
            if not match:
                raise CaptionError(f"segment {text!r} is not START-END in seconds, e.g. 12.5-40")
            start, end = float(match[1]), float(match[2])
            # a millisecond of slack: annotated ends are the container's duration, rounded
            if not start < end <= duration + 1e-3:
                raise CaptionError(f"segment {text!r} lies outside the video (0-{duration:.2f} s) or ends before it starts")
            segments.append((start, min(end, duration)))
        return segments
    if window is not None:
        if not math.isfinite(window) or window <= 0:
            raise CaptionError(f"--window must be a positive number of seconds, not {window}")
        if duration / window > MAX_SEGMENTS:
            raise CaptionError(f"--window {window} would cut the {duration:.0f} s video into more than "
                               f"{MAX_SEGMENTS:,} segments")
        return [(k * window, min((k + 1) * window, duration)) for k in range(math.ceil(duration / window))]
    return [(0.0, duration)]


def caption_video(source: str, cfg: Config, checkpoint: Path | None = None, spans: list[str] | None = None,
                  window: float | None = None) -> Iterator[dict]:
    """Rows ``{video_id, start, end, frames, caption}``, one per segment, in order, each as soon
    as its segment is done."""
    checkpoint = checkpoint or latest_checkpoint(cfg)
    encoder = ClipEncoder(cfg.clip)
    check_clip(checkpoint, encoder, cfg)
    path, duration = open_video(source, cfg)
    fps = cfg.activitynet.fps
    segments = plan_segments(duration, spans, window)
    grids = [grid_range(start, end, fps) for start, end in segments]
    for (start, end), grid in zip(segments, grids):
        if not len(grid):
            raise CaptionError(f"segment {start:g}-{end:g} holds no frame of the {fps:g} fps grid")
    model, tokenizer = load_caption_model(cfg, checkpoint)
    device, stops = next(model.parameters()).device, stop_ids(cfg, tokenizer)

    pieces = [Piece(i, start, range(first, min(first + PIECE_FRAMES, grid.stop)))
              for i, ((start, _), grid) in enumerate(zip(segments, grids))
              for first in range(grid.start, grid.stop, PIECE_FRAMES)]

    def decode(piece: Piece):
        return decode_range(path, piece.frames, fps, encoder.image_size, encoder.batch_size, cfg.decode.ffmpeg_threads)

    name = video_name(source)
    progress = tqdm(total=sum(len(g) for g in grids), unit="frame", desc=name, file=sys.stderr, disable=None)
    streams: dict[int, object] = {}
    for out in embed_stream(pieces, encoder, decode, lambda p: str(p.segment), cfg.decode.workers):
        if isinstance(out, Failure):
            raise CaptionError(f"{source}: cannot decode segment {segments[int(out.key)]}: {out.reason}")
        piece, embeddings = out
        # as stored in the dataset's shards, and as read back by training and evaluation
        embeddings = embeddings.astype(cfg.clip.embedding_dtype).astype(np.float32)
        times = (np.arange(piece.frames.start, piece.frames.stop) / fps).astype(np.float32) - np.float32(piece.start)
        stream = streams.setdefault(piece.segment, model.mapper.stream(len(grids[piece.segment])))
        with torch.inference_mode():
            stream.feed(torch.from_numpy(embeddings).to(device), torch.from_numpy(times).to(device))
        progress.update(len(piece.frames))
        if stream.seen == stream.n:
            with torch.inference_mode():
                tokens = beam_search(model.lm, streams.pop(piece.segment).prefix(), cfg.evaluate.beam,
                                     cfg.evaluate.max_tokens, stops)
            start, end = segments[piece.segment]
            yield {"video_id": name, "start": start, "end": end, "frames": stream.n,
                   "caption": captions(tokenizer, tokens)[0]}
    progress.close()


def timestamp(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    return f"{int(minutes // 60)}:{int(minutes % 60):02d}:{s:04.1f}"

"""CLIP image tower from open_clip, fed with frames that ffmpeg already resized and cropped.

``model`` is an open_clip model name, or a path to a model-config JSON (open_clip's format, its
file stem becomes the name). ``pretrained`` is an open_clip tag (``openai``), a local checkpoint
path, or None for random weights (seeded: every process builds the same random network).
Configs shipped in ``clipmemcap/frames/clip_configs`` (the tiny test model) are registered on import.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import open_clip
import torch

from clipmemcap.core.config import ClipConfig
from clipmemcap.core.devices import resolve_device

CLIP_CONFIGS = Path(__file__).parent / "clip_configs"
open_clip.add_model_config(CLIP_CONFIGS)


def _model_name(model: str) -> str:
    path = Path(model)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"CLIP model config {model} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model {model!r}; known: {', '.join(open_clip.list_models()[:8])}, ...")
    return model


class _NoRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextmanager
def _random_weights_meant(meant: bool) -> Iterator[None]:
    """open_clip warns on the root logger whenever a model starts from random weights; with
    ``pretrained: null`` that is the setting, not a problem, so the warning is dropped."""
    notice = _NoRandomInitNotice()
    if meant:
        logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


class ClipEncoder:
    """Batched, inference-mode CLIP image embeddings of uint8 RGB frames [n, size, size, 3]."""

    def __init__(self, cfg: ClipConfig):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.batch_size = cfg.batch_size
        name = _model_name(cfg.model)
        pretrained = cfg.pretrained
        if pretrained and Path(pretrained).suffix and not Path(pretrained).is_file():
            raise FileNotFoundError(f"CLIP checkpoint {pretrained} does not exist")
        try:
            # Seeded: random weights (pretrained None) must be the same model in every flow and
            # run, or video frames and images would be embedded by two different networks.
            with torch.random.fork_rng(devices=[]), _random_weights_meant(pretrained is None):
                torch.manual_seed(0)
                model = open_clip.create_model(name, pretrained=pretrained, device=self.device)
        except RuntimeError as err:
            raise RuntimeError(f"cannot load CLIP {name!r} with pretrained={pretrained!r}: {err}") from err
        self.model = model.eval()
        preprocess = open_clip.get_model_preprocess_cfg(model)
        size = preprocess["size"]
        self.image_size = size if isinstance(size, int) else size[0]
        self.embed_dim = model.visual.output_dim
        # (x / 255 - mean) / std folded into x * scale - shift; [1, 3, 1, 1] broadcasts over
        # [batch, channels, height, width]. Two in-place passes instead of four allocations: on a
        # CPU the normalisation otherwise costs more than a small model's forward.
        mean = torch.tensor(preprocess["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(preprocess["std"], device=self.device).view(1, 3, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), mean / std
        self.name, self.pretrained = name, pretrained

    def weights_digest(self) -> str:
        """sha256 of the weights: a checkpoint replaced under the same path, or another random
        network, is another embedding space."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        """[n, H, W, 3] uint8 -> [n, D] float32 (unnormalised, as ClipCap uses them)."""
        out = []
        for i in range(0, len(frames), self.batch_size):
            batch = torch.from_numpy(frames[i : i + self.batch_size]).to(self.device, non_blocking=True)
            x = batch.permute(0, 3, 1, 2).contiguous().float().mul_(self.scale).sub_(self.shift)  # [b, 3, H, W]
            out.append(self.model.encode_image(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

"""The real open_clip code path with a tiny random config; pretrained weights cannot be fetched
here, so the 'load real weights' path is tested with a checkpoint this test saves to disk."""

import numpy as np
import open_clip
import pytest
import torch

from clipmemcap.frames.clip_encoder import CLIP_CONFIGS, ClipEncoder
from clipmemcap.core.config import ClipConfig

TINY = dict(model="TinyViT", pretrained=None, device="cpu", batch_size=4)


def frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)


def test_local_checkpoint_loads_the_saved_weights(tmp_path):
    torch.manual_seed(7)  # not the encoder's own seed for random weights
    reference = open_clip.create_model("TinyViT", pretrained=None).eval()
    checkpoint = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), checkpoint)
    encoder = ClipEncoder(ClipConfig(**{**TINY, "pretrained": str(checkpoint)}))
    x = frames(6)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference.encode_image((torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std)
    got = encoder.encode(x)
    assert got.shape == (6, 64)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    # a fresh random model differs, so the comparison above can fail
    assert not np.allclose(ClipEncoder(ClipConfig(**TINY)).encode(x), got, atol=1e-3)


def test_model_config_json_path_and_batching_do_not_change_results():
    a = ClipEncoder(ClipConfig(**{**TINY, "model": str(CLIP_CONFIGS / "TinyViT.json")}))
    b = ClipEncoder(ClipConfig(**{**TINY, "batch_size": 64}))
    b.model.load_state_dict(a.model.state_dict())
    x = frames(9)
    np.testing.assert_allclose(a.encode(x), b.encode(x), rtol=1e-4, atol=1e-5)
    assert a.encode(x[:0]).shape == (0, 64)


def test_bad_model_inputs_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown CLIP model 'NoSuchViT'"):
        ClipEncoder(ClipConfig(**{**TINY, "model": "NoSuchViT"}))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ClipEncoder(ClipConfig(**{**TINY, "pretrained": str(tmp_path / "missing.pt")}))
    with pytest.raises(RuntimeError, match="pretrained='openai'"):  # no hub here: must fail, not hang
        ClipEncoder(ClipConfig(**{**TINY, "pretrained": "openai"}))


def test_random_weights_are_the_same_network_in_every_process():
    """The benchmark embeds images and video frames in two flows: with random weights they must
    still be one model, whatever the global random state."""
    torch.manual_seed(1)
    first = ClipEncoder(ClipConfig(**TINY)).encode(frames(3))
    torch.manual_seed(2)
    second = ClipEncoder(ClipConfig(**TINY)).encode(frames(3))
    assert np.array_equal(first, second)
    assert torch.initial_seed() == 2  # the caller's random state is left alone


def test_the_weights_digest_tells_networks_apart(tmp_path):
    torch.manual_seed(3)
    torch.save(open_clip.create_model("TinyViT", pretrained=None).state_dict(), tmp_path / "other.pt")
    random = ClipEncoder(ClipConfig(**TINY))
    assert random.weights_digest() == ClipEncoder(ClipConfig(**TINY)).weights_digest()
    assert random.weights_digest() != ClipEncoder(ClipConfig(**{**TINY, "pretrained": str(tmp_path / "other.pt")})).weights_digest()

"""Fine-tuning starts from the pre-trained weights (the earlier attempt silently did not)."""

import json

import pytest
import torch

from clipmemcap.core.config import load_config
from clipmemcap.model.mappers import MapperConfig, build_mapper, save_mapper
from clipmemcap.training.stages import initial_finetune_model
from clipmemcap.model.prefix_lm import load_gpt2
from conftest import GPT2_TINY, ROOT

MAPPER = {"layers": 2, "heads": 4, "clip_length": 2, "prefix_length": 3, "clip_dim": 64, "embed_dim": 64}


def settings(tmp_path, finetune_mapper, finetune_lm=True):
    return load_config(ROOT / "params.yaml", [
        f"storage.root={tmp_path}", f"model.finetune_lm={str(finetune_lm).lower()}",
        f"finetune.runs={{probe: {{mapper: {finetune_mapper}}}}}",
        "finetune.mapper_overrides={layers: 2, heads: 4, prefix_length: 3, window: 4, clip_length: 2}"])


@pytest.fixture
def pretrained(tmp_path):
    """What the pretrain stage leaves: best/mapper and best/gpt2, and a dataset manifest."""
    torch.manual_seed(5)
    mapper = build_mapper(MapperConfig.load("clipcap-transformer", **MAPPER))
    save_mapper(mapper, tmp_path / "models" / "pretrain" / "best" / "mapper")
    gpt2 = load_gpt2(GPT2_TINY)
    gpt2.save_pretrained(tmp_path / "models" / "pretrain" / "best" / "gpt2")
    (tmp_path / "activitynet").mkdir()
    (tmp_path / "activitynet" / "manifest.json").write_text(json.dumps({"clip": {"embed_dim": 64}}))
    return mapper, gpt2


@pytest.mark.parametrize("name", ["video-memorizing", "video-temporal", "clipcap-transformer"])
def test_finetune_starts_from_the_pretrained_weights(tmp_path, pretrained, name):
    mapper, gpt2 = pretrained
    model, copied = initial_finetune_model(settings(tmp_path, name), "probe", 0)
    own = model.mapper.state_dict()
    for key, value in mapper.state_dict().items():
        if key in copied:
            assert torch.equal(own[key], value), key
    expected = len(mapper.state_dict()) - (0 if name == "clipcap-transformer" else 2)  # all but `linear`
    assert len(copied) == expected
    for key, value in gpt2.state_dict().items():
        assert torch.equal(model.lm.gpt2.state_dict()[key], value), key


def test_finetune_without_pretraining_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the pretrain stage first"):
        initial_finetune_model(settings(tmp_path, "video-memorizing"), "probe", 0)


def test_an_unknown_run_is_an_error_naming_the_known_ones(tmp_path, pretrained):
    with pytest.raises(ValueError, match="no run 'nope' in finetune.runs \\(known: probe\\)"):
        initial_finetune_model(settings(tmp_path, "video-memorizing"), "nope", 0)

"""Training loop: resume after a kill, warm-up, best-epoch selection, dvclive logs."""

import csv
import shutil

import numpy as np
import pytest
import torch
from transformers import GPT2Config

from clipmemcap.training.datasets import Sample
from clipmemcap.core.config import TrainConfig
from clipmemcap.model.mappers import MapperConfig, build_mapper
from clipmemcap.model.prefix_lm import PrefixLM, load_gpt2, load_tokenizer
from clipmemcap.training.loop import CaptionModel, train
from conftest import TOKENIZER as TOKENIZER_DIR

TOKENIZER = load_tokenizer(TOKENIZER_DIR)
WORDS = ["red", "green", "blue", "circle", "square", "then", "a", "slowly"]


def clips(n, seed):
    """In-memory clips of 1-8 frames with short captions (the Parquet readers have their own tests)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(1, 9))
        out.append(Sample(("v", i), rng.standard_normal((length, 16)).astype(np.float32),
                          np.arange(length, dtype=np.float32) / 5, " ".join(rng.choice(WORDS, 4))))
    return out


def model(seed=0, frozen=False):
    torch.manual_seed(seed)
    mapper = build_mapper(MapperConfig.load("video-memorizing", clip_dim=16, embed_dim=32, heads=4, layers=2,
                                            prefix_length=3, window=4, top_k=4))
    gpt2 = load_gpt2(GPT2Config(vocab_size=len(TOKENIZER), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    return CaptionModel(mapper, PrefixLM(gpt2, TOKENIZER.eos_token_id, frozen=frozen))


CFG = TrainConfig(lr=1e-3, batch_size=4, epochs=2, warmup_fraction=0.3, checkpoint_every=2, device="cpu")


def weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    train_data, val_data = clips(12, 1), clips(4, 2)
    straight = model()
    best = train(straight, train_data, val_data, TOKENIZER, CFG, tmp_path / "straight")

    class Killed(Exception):
        pass

    def kill_at_5(step):  # after the checkpoint at step 4, before the next one
        if step == 5:
            raise Killed

    interrupted = model()
    with pytest.raises(Killed):
        train(interrupted, train_data, val_data, TOKENIZER, CFG, tmp_path / "resumed", on_step=kill_at_5)
    resumed = model(seed=123)  # a fresh process would start from other random weights
    best_resumed = train(resumed, train_data, val_data, TOKENIZER, CFG, tmp_path / "resumed")
    for key, value in weights(straight).items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert best == best_resumed and best["epoch"] in (0, 1)
    assert (tmp_path / "resumed" / "best" / "mapper" / "model.safetensors").exists()


def test_a_run_killed_in_the_middle_of_a_checkpoint_swap_resumes_from_the_new_checkpoint(tmp_path):
    """A kill between the swap's renames leaves only last.next/, complete: the earlier code threw
    it away and trained again from step 0 (and logged every step twice)."""
    train_data, val_data = clips(12, 1), clips(4, 2)
    straight = model()
    train(straight, train_data, val_data, TOKENIZER, CFG, tmp_path / "straight")

    class Killed(Exception):
        pass

    def kill_at_5(step):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(model(), train_data, val_data, TOKENIZER, CFG, tmp_path / "swap", on_step=kill_at_5)
    out = tmp_path / "swap"
    shutil.rmtree(out / "last")  # as if killed after the old checkpoint went, before the new one moved in:
    shutil.copytree(tmp_path / "straight" / "last", out / "last.next")  # a complete checkpoint (step 6)
    steps = []
    resumed = model(seed=123)
    train(resumed, train_data, val_data, TOKENIZER, CFG, out, on_step=steps.append)
    assert steps == []  # step 6 was the last one: nothing left to train
    for key, value in weights(straight).items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("last")) == ["last"]


def test_warm_up_reaches_the_set_learning_rate_and_dvclive_logs_it(tmp_path):
    train(model(), clips(8, 3), clips(4, 4), TOKENIZER, CFG.model_copy(update={"checkpoint_every": 100}), tmp_path)
    with open(tmp_path / "dvclive" / "plots" / "metrics" / "train" / "lr.tsv") as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle, delimiter="\t")]
    assert len(lrs) == 4 and max(lrs) == pytest.approx(CFG.lr)  # 4 steps, warm-up of round(0.3*4) = 1
    assert lrs == sorted(lrs, reverse=True)


def test_frozen_gpt2_is_not_trained_or_saved(tmp_path):
    frozen = model(frozen=True)
    before = {k: v.clone() for k, v in frozen.lm.gpt2.state_dict().items()}
    train(frozen, clips(8, 5), clips(4, 6), TOKENIZER, CFG, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in frozen.lm.gpt2.state_dict().items())
    assert not (tmp_path / "last" / "gpt2").exists()


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    data = clips(8, 7)

    class Stop(Exception):
        pass

    def stop_at_3(step):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train(model(), data, data, TOKENIZER, CFG, tmp_path, on_step=stop_at_3, fingerprint={"mapper": "a"})
    other = model()
    train(other, data, data, TOKENIZER, CFG, tmp_path, fingerprint={"mapper": "b"})  # must start at step 0
    fresh = model()
    train(fresh, data, data, TOKENIZER, CFG, tmp_path / "fresh", fingerprint={"mapper": "b"})
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key


def test_training_stops_when_validation_stops_improving_and_stays_stopped(tmp_path):
    """patience: a run stops once that many epochs pass without a lower validation loss (here
    it over-fits 12 clips with random captions); run again, it does not train further."""
    cfg = CFG.model_copy(update={"epochs": 30, "lr": 1e-2, "patience": 2, "checkpoint_every": 1000})
    steps = []
    best = train(model(), clips(12, 1), clips(8, 2), TOKENIZER, cfg, tmp_path / "run", on_step=steps.append)
    per_epoch = 3
    assert best["stopped_early"] and steps[-1] < 30 * per_epoch  # stopped before the budget ran out
    assert steps[-1] // per_epoch - 1 == best["epoch"] + 2  # two epochs after the best one
    with open(tmp_path / "run" / "dvclive" / "plots" / "metrics" / "val" / "loss.tsv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f, delimiter="\t")]
    assert len(losses) == best["epoch"] + 3 and min(losses) == losses[best["epoch"]] == best["val_loss"]
    again = []
    assert train(model(), clips(12, 1), clips(8, 2), TOKENIZER, cfg, tmp_path / "run", on_step=again.append) == best
    assert again == []  # resumed, and nothing left to do

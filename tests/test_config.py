import pytest
from pydantic import ValidationError

from clipmemcap.config import load_config
from conftest import ROOT


def test_committed_params_load_and_match_the_issue_defaults():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.activitynet.fps == 5
    assert cfg.activitynet.subset.train_videos == 300 and cfg.activitynet.subset.test_videos == 100
    assert cfg.clip.model == "ViT-B-32" and cfg.clip.pretrained == "openai"
    assert "{youtube_id}" in cfg.activitynet.video_url_template


def test_overrides_are_typed_and_nested():
    cfg = load_config(ROOT / "params.yaml", ["activitynet.subset.train_videos=7", "clip.pretrained=null",
                                             "activitynet.download.rate_limit=2M"])
    assert cfg.activitynet.subset.train_videos == 7
    assert cfg.clip.pretrained is None
    assert cfg.activitynet.download.rate_limit == "2M"


@pytest.mark.parametrize("override", ["activitynet.subset.trian_videos=3", "clip.batch_size=0",
                                      "clip.embedding_dtype=int8"])
def test_bad_settings_fail_loudly(override):
    with pytest.raises(ValidationError):
        load_config(ROOT / "params.yaml", [override])


def test_malformed_override_and_missing_file_name_the_input(tmp_path):
    with pytest.raises(ValueError, match="novalue"):
        load_config(None, ["novalue"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")

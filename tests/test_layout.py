"""The one module that names paths: artifact names, manifests, and paths from input data."""

import pytest

from clipmemcap.core.layout import Layout, UnsafePath, inside, read_manifest
from clipmemcap.sources.coco import _plain_relative


def test_every_artifact_is_named_under_its_root(tmp_path):
    layout = Layout(tmp_path / "root", tmp_path / "cache")
    assert layout.activitynet.frame_shard("v_abcdefghijk") == tmp_path / "root/activitynet/frames/v_abcdefghijk.parquet"
    assert layout.coco.shard(3) == tmp_path / "root/coco/images/shard-00003.parquet"
    assert layout.finetune("memorizing", 2) == tmp_path / "root/models/finetune/memorizing-2"
    assert layout.activitynet.videos == tmp_path / "cache/activitynet/videos"
    assert str(Layout.run_metrics("uniform", 0)) == "metrics/runs/uniform-0.json"


def test_a_missing_manifest_names_the_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="incomplete"):
        read_manifest(tmp_path / "coco")


@pytest.mark.parametrize("hostile", ["/etc/passwd", "../x", "a/../../x", "a/b/../../../x", "link/secret", ".."])
def test_paths_from_input_data_stay_inside_their_root(tmp_path, hostile):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)  # a link inside the root that points out of it
    (tmp_path / "secret").write_text("x")
    with pytest.raises(UnsafePath, match="not a path inside"):
        inside(root, hostile)
    assert inside(root, "a/b.jpg") == (root / "a" / "b.jpg").resolve()


@pytest.mark.parametrize("name,ok", [("train2014/COCO_1.jpg", True), ("a/./b.jpg", True), ("/abs/x.jpg", False),
                                     ("val2014/../../x", False), ("", False), ("a\\..\\x", False),
                                     ("x\x00.jpg", False), ("a" * 2000, False)])
def test_coco_file_names_must_be_plain_relative_paths(name, ok):
    assert _plain_relative(name) is ok

"""The COCO flow end to end: a real Prefect server, images over HTTP from 127.0.0.1, Pillow and
ffmpeg on real image files, the real open_clip code path with a tiny config."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipmemcap.core.jsonio import AnnotationError
from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.sources.coco import load_captions
from clipmemcap.core.config import ClipConfig
from clipmemcap.frames.ffmpeg_frames import decode_range, decode_images
from clipmemcap.core.shards import read_image_shard
from clipmemcap.sources.synthetic import draw_frame, make_coco_source, write_captions_zip
from conftest import ROOT, TINY_CLIP

pytestmark = pytest.mark.slow

GRAY, CMYK, ALPHA, HUGE, TOO_BIG, CORRUPT, MISSING, TWICE, EMPTY = 9001, 9002, 9003, 9004, 9005, 9006, 9007, 1000, 9008


@pytest.fixture(scope="module")
def coco_source(tmp_path_factory):
    """A Karpathy-format source plus one image or entry per kind of bad input."""
    root = tmp_path_factory.mktemp("coco")
    src = make_coco_source(root, n_images=10, fmt="karpathy", seed=3)
    data = json.loads(zipfile.ZipFile(src.captions_path).read("dataset_coco.json"))
    folder = src.images_root / "val2014"
    picture = draw_frame(5, 640, 480, (30, 160, 90))

    def add(image_id, filename, captions=("a picture",)):
        data["images"].append({"cocoid": image_id, "filepath": "val2014", "filename": filename, "split": "test",
                               "sentences": [{"raw": c} for c in captions]})

    Image.fromarray(picture).convert("L").save(folder / "gray.jpg")
    add(GRAY, "gray.jpg")
    Image.fromarray(picture).convert("CMYK").save(folder / "cmyk.jpg")
    add(CMYK, "cmyk.jpg")
    Image.fromarray(picture).convert("RGBA").save(folder / "alpha.png")
    add(ALPHA, "alpha.png")
    Image.fromarray(draw_frame(7, 4000, 3000, (200, 30, 30))).save(folder / "huge.jpg", quality=80)
    add(HUGE, "huge.jpg")  # 12 MP: under the test's 15 MP limit, so embedded
    Image.new("RGB", (5000, 4000), (9, 9, 9)).save(folder / "too_big.jpg", quality=50)
    add(TOO_BIG, "too_big.jpg")  # 20 MP: recorded
    jpeg = (folder / "gray.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    add(CORRUPT, "corrupt.jpg")
    add(MISSING, "missing.jpg")  # 404
    add(TWICE, "whatever.jpg")  # the id of the first synthetic image, again
    add(EMPTY, "gray.jpg", captions=("   ", ""))
    data["images"][1]["sentences"].append({"raw": "  "})  # one empty caption beside good ones
    write_captions_zip(src.captions_path, {"dataset_coco.json": data})
    return src, data


def settings(server_url: str, storage: Path, **extra) -> list[str]:
    return TINY_CLIP + [
        f"storage.root={storage}",
        f"coco.captions_url={server_url}/caption_datasets.zip",
        f"coco.images_url_template={server_url}/images/{{file}}",
        "coco.images_dir=null",  # download the images (the committed settings read the benchmark's from disk)
        "coco.max_pixels=15000000", "coco.shard_span=2000",
        "coco.download.retries=1", "coco.download.retry_delay_s=0.2", "coco.download.timeout_s=5",
    ] + [f"coco.{k}={v}" for k, v in extra.items()]


def test_coco_flow_end_to_end_with_bad_inputs_and_rerun(tmp_path, http_server, prefect_server, coco_source, monkeypatch):
    from flows.coco import coco_ingest

    src, data = coco_source
    shutil.copytree(src.images_root, http_server.root / "images")
    shutil.copy(src.captions_path, http_server.root / "caption_datasets.zip")
    http_server.fail_first["/images/train2014/COCO_train2014_000000001037.jpg"] = 1  # a 500, then fine
    calls = []
    real_encode = ClipEncoder.encode

    def counting_encode(self, frames):  # instrumentation only: the real model runs
        calls.append(len(frames))
        return real_encode(self, frames)

    monkeypatch.setattr(ClipEncoder, "encode", counting_encode)
    storage = tmp_path / "storage"
    manifest = coco_ingest(params=str(ROOT / "params.yaml"), overrides=settings(http_server.url, storage))
    out = storage / "coco"

    failures = {}
    for row in pq.read_table(out / "failures.parquet").to_pylist():
        failures.setdefault(int(row["image_id"]), []).append((row["stage"], row["reason"]))
    expected = {MISSING: ("download", "404"), CORRUPT: ("decode", "not a readable image"),
                TOO_BIG: ("decode", "exceeds the 15,000,000-pixel limit"), TWICE: ("annotations", "listed twice"),
                EMPTY: ("annotations", "no caption left")}
    for image_id, (stage, words) in expected.items():
        assert any(s == stage and words in r for s, r in failures.get(image_id, [])), (image_id, failures)
    last = len(data["images"][1]["sentences"]) - 1
    assert any(f"caption {last} is empty" in r for _, r in failures[data["images"][1]["cocoid"]])

    good = [e for e in data["images"] if e["cocoid"] not in (MISSING, CORRUPT, TOO_BIG, EMPTY)]
    good = list({e["cocoid"]: e for e in reversed(good)}.values())  # first entry of the duplicate id wins
    ids = np.concatenate([read_image_shard(p)[0] for p in sorted((out / "images").glob("shard-*.parquet"))])
    assert sorted(ids.tolist()) == sorted(e["cocoid"] for e in good)
    assert {GRAY, CMYK, ALPHA, HUGE} <= set(ids.tolist())  # converted or large, not rejected
    assert sum(calls) == len(good)  # each image embedded once, however many captions it has
    assert http_server.hits["/images/train2014/COCO_train2014_000000001037.jpg"] == 2  # the 500 was retried

    captions = pq.read_table(out / "captions.parquet").to_pandas()
    expected_rows = sorted((e["cocoid"], s["raw"].strip(), e["split"]) for e in good for s in e["sentences"] if s["raw"].strip())
    assert sorted(zip(captions.image_id, captions.caption, captions.split)) == expected_rows
    assert manifest["counts"]["images"] == len(good) and manifest["counts"]["captions"] == len(expected_rows)
    assert set(manifest["counts"]["images_per_split"]) == {"train", "restval", "val", "test"}
    assert len(list((out / "images").glob("shard-*.parquet"))) == 2  # ids 1000-1333 and 9001-9008

    # re-run: finished images are neither fetched nor embedded again; failures are retried
    hits, calls[:] = dict(http_server.hits), []
    shutil.copy(src.images_root / "val2014" / "gray.jpg", http_server.root / "images" / "val2014" / "missing.jpg")
    second = coco_ingest(params=str(ROOT / "params.yaml"), overrides=settings(http_server.url, storage))
    assert sum(calls) == 1 and second["counts"]["images"] == len(good) + 1
    assert http_server.hits["/images/val2014/missing.jpg"] == hits["/images/val2014/missing.jpg"] + 1
    refetched = {p for p in hits if p.startswith("/images/") and http_server.hits[p] != hits[p] and "missing" not in p}
    assert refetched == {"/images/val2014/corrupt.jpg", "/images/val2014/too_big.jpg"}  # only the failed ones


def test_official_format_from_a_local_folder(tmp_path, prefect_server):
    from flows.coco import coco_ingest

    src = make_coco_source(tmp_path / "src", n_images=6, fmt="official", seed=4)
    storage = tmp_path / "storage"
    manifest = coco_ingest(params=str(ROOT / "params.yaml"), overrides=TINY_CLIP + [
        f"storage.root={storage}", f"coco.captions_url={src.captions_path}", "coco.captions_format=official",
        f"coco.images_dir={src.images_root}", "coco.subset_images=4", "coco.seed=1"])
    captions = pq.read_table(storage / "coco" / "captions.parquet").to_pandas()
    assert captions.image_id.nunique() == 4 and set(captions.split) <= {"train2017", "val2017"}
    assert manifest["counts"]["images"] == 4
    assert not (storage / "cache" / "coco" / "images").exists()  # nothing downloaded


def test_same_picture_as_image_and_as_video_frame_embeds_the_same(tmp_path):
    picture = draw_frame(321, 640, 360, (200, 60, 30))
    Image.fromarray(picture).save(tmp_path / "picture.png")
    video = tmp_path / "picture.mp4"
    encode = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                               "-s", "640x360", "-r", "30", "-i", "pipe:", "-c:v", "libx264rgb", "-qp", "0", str(video)],
                              stdin=subprocess.PIPE)
    encode.communicate(picture.tobytes() * 30)  # one second of the picture, losslessly encoded
    frames = np.concatenate(list(decode_range(video, range(0, 5), 5, 224)))
    image = next(decode_images([("picture", tmp_path / "picture.png")], 224, 10**8))
    np.testing.assert_array_equal(frames[3], image[0])  # the same pixels through the same resize
    encoder = ClipEncoder(ClipConfig(model="TinyViT", pretrained=None, device="cpu"))
    np.testing.assert_allclose(encoder.encode(frames[3:4]), encoder.encode(image), rtol=1e-5, atol=1e-6)


def test_caption_files_with_bad_json_or_format_fail_clearly(tmp_path):
    bad = tmp_path / "caption_datasets.zip"
    write_captions_zip(bad, {"dataset_coco.json": b'{"images": [\n{"cocoid": 1,,}]}'})
    with pytest.raises(AnnotationError, match=r"dataset_coco.json: malformed JSON at line 2 column"):
        load_captions(bad, "karpathy")
    write_captions_zip(bad, {"dataset_coco.json": {"images": [{"id": 1}]}})
    with pytest.raises(AnnotationError, match="not in the karpathy caption format"):
        load_captions(bad, "karpathy")
    with pytest.raises(AnnotationError, match=r"no captions_\*.json inside"):
        load_captions(bad, "official")


def test_hostile_image_paths_touch_nothing_outside_storage(tmp_path, http_server, prefect_server):
    """A captions file is input from the internet. An image whose file name is an absolute path,
    or climbs out with '..', is recorded and never read, fetched or deleted: the earlier code
    deleted both victim files (they failed to decode as images) and made folders outside storage."""
    from flows.coco import coco_ingest

    src = make_coco_source(tmp_path / "src", n_images=3, fmt="karpathy", seed=5)
    data = json.loads(zipfile.ZipFile(src.captions_path).read("dataset_coco.json"))
    victims = tmp_path / "victims"
    victims.mkdir()
    (victims / "absolute.txt").write_text("keep me")
    (victims / "dotdot.txt").write_text("keep me too")
    climb = "../" * 5 + "victims"  # from storage/cache/coco/images/val2014 up to tmp_path
    hostile = {777001: (str(victims), "absolute.txt"), 777002: ("val2014", f"{climb}/dotdot.txt"),
               777003: ("val2014", f"{climb}/new/made.jpg"), 777004: ("val2014", "x" * 300 + ".jpg")}
    for image_id, (filepath, filename) in hostile.items():
        data["images"].append({"cocoid": image_id, "filepath": filepath, "filename": filename, "split": "train",
                               "sentences": [{"raw": "a victim"}]})
    write_captions_zip(src.captions_path, {"dataset_coco.json": data})
    shutil.copytree(src.images_root, http_server.root / "images")
    shutil.copy(src.captions_path, http_server.root / "caption_datasets.zip")
    storage = tmp_path / "storage"

    manifest = coco_ingest(params=str(ROOT / "params.yaml"), overrides=settings(http_server.url, storage))
    assert (victims / "absolute.txt").read_text() == "keep me" and (victims / "dotdot.txt").read_text() == "keep me too"
    assert sorted(p.name for p in victims.iterdir()) == ["absolute.txt", "dotdot.txt"]  # no folder made there
    assert manifest["counts"]["images"] == 3
    failures = pq.read_table(storage / "coco" / "failures.parquet").to_pylist()
    recorded = {int(f["image_id"]): f for f in failures}
    assert set(hostile) <= recorded.keys()
    for image_id in hostile:
        assert recorded[image_id]["stage"] == "annotations"
        assert "not a relative path inside the COCO root" in recorded[image_id]["reason"]
    assert not any("victims" in path for path in http_server.hits)  # nothing was fetched for them either


def test_a_damaged_shard_is_rebuilt_not_a_crash(tmp_path, http_server, prefect_server):
    """A zeroed or bit-flipped COCO shard crashed the flow on resume."""
    from flows.coco import coco_ingest

    from clipmemcap.core.shards import digest

    src = make_coco_source(tmp_path / "src", n_images=6, fmt="karpathy", seed=7)
    shutil.copytree(src.images_root, http_server.root / "images")
    shutil.copy(src.captions_path, http_server.root / "caption_datasets.zip")
    storage = tmp_path / "storage"
    run = settings(http_server.url, storage, shard_span=2)
    coco_ingest(params=str(ROOT / "params.yaml"), overrides=run)
    shards = sorted((storage / "coco" / "images").glob("shard-*.parquet"))
    original = {p: p.read_bytes() for p in shards}
    zeroed, flipped = shards[:2]
    zeroed.write_bytes(bytes(len(original[zeroed])))
    damaged = bytearray(original[flipped])
    damaged[len(damaged) // 2] ^= 0x10
    flipped.write_bytes(bytes(damaged))
    manifest = coco_ingest(params=str(ROOT / "params.yaml"), overrides=run)
    assert all(p.read_bytes() == original[p] for p in shards)
    out = storage / "coco"
    assert {f"images/{p.name}" for p in shards} <= manifest["files"].keys()
    assert all(digest(out / name) == value for name, value in manifest["files"].items())

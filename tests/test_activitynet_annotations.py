import json

import pytest

from clipmemcap.sources.activitynet import load_annotations, normalise_file, read_zip
from clipmemcap.core.jsonio import AnnotationError, parse_json
from clipmemcap.sources.synthetic import write_captions_zip
from conftest import ASSETS, ROOT

SHARED = ROOT.parent / "shared" / "activitynet"
REAL_COUNTS = {"train.json": (10009, 37421), "val_1.json": (4917, 17505), "val_2.json": (4885, 17031)}


def real_file(name):
    return json.loads((SHARED / name).read_text())


@pytest.mark.skipif(not SHARED.exists(), reason="the full real files live in ../shared/activitynet (present in CI)")
def test_real_files_counts_and_quirks(tmp_path):
    zip_path = tmp_path / "captions.zip"
    write_captions_zip(zip_path, {name: (SHARED / name).read_bytes() for name in REAL_COUNTS})
    files = load_annotations(zip_path, fps=5)
    for name, (n_videos, n_segments) in REAL_COUNTS.items():
        assert len(real_file(name)) == n_videos
        assert files[name].raw_segments == n_segments
    train = files["train.json"]
    reasons = [f.reason for f in train.failures]
    # Measured on the real train.json (FIELD_NOTES says 2 and 29): 4 segments with end <= start
    # (2 with end < start, 2 zero-length) are rejected; the 261 with end > duration are clamped.
    raw = real_file("train.json")
    assert sum(e <= s for v in raw.values() for s, e in v["timestamps"]) == 4
    assert sum("end <= start" in r for r in reasons) == 4
    over = {(k, s) for k, v in raw.items() for s, e in v["timestamps"] if e > v["duration"]}
    assert len(over) == 261
    clamped = {(v.video_id, s.start) for v in train.videos.values() for s in v.segments if s.end == v.duration}
    assert over <= clamped
    # every kept segment is valid, stripped, sorted by start
    for video in train.videos.values():
        starts = [s.start for s in video.segments]
        assert starts == sorted(starts)
        assert all(0 <= s.start < s.end <= video.duration and s.caption == s.caption.strip() for s in video.segments)
    kept = sum(len(v.segments) for v in train.videos.values())
    rejected_segments = sum(r.split(": ", 1)[1].startswith("segment") for r in reasons)
    assert kept + rejected_segments == REAL_COUNTS["train.json"][1]
    # val_2's videos are a subset of val_1's; train shares none with val_1
    assert set(files["val_2.json"].videos) <= set(real_file("val_1.json"))
    assert not any("both train.json and val_1.json" in r for r in reasons)


def test_excerpt_quirks_are_normalised_and_recorded():
    raw = json.loads((ASSETS / "activitynet_train_excerpt.json").read_text())
    result = normalise_file("train.json", raw, fps=5)
    video = result.videos["v_N7ppHQNikv8"]  # real entry with a [34.77, 34.77] segment
    assert [s.index for s in video.segments] == list(range(len(video.segments)))
    assert any(f.key == "v_N7ppHQNikv8" and "end <= start" in f.reason for f in result.failures)
    assert all(not s.caption.startswith(" ") for v in result.videos.values() for s in v.segments)
    assert any(s.caption != c for v in raw.values() for s, c in zip(
        result.videos[next(iter(raw))].segments, v["sentences"]))


def test_each_rule_records_a_reason():
    raw = {
        "v_AAAAAAAAAAA": {"duration": 10.0, "timestamps": [[6, 9], [2, 30], [5, 3], [-1, 2], [1, 2], [10, 12], [4.01, 4.1]],
                          "sentences": ["b", " a  ", "x", "y", "   ", "z", "w"]},
        "../../x": {"duration": 5, "timestamps": [[0, 1]], "sentences": ["a"]},
        "v_BBBBBBBBBBB": {"duration": 5, "timestamps": [[0, 1]]},
        "v_CCCCCCCCCCC": {"duration": 0, "timestamps": [[0, 1]], "sentences": ["a"]},
    }
    result = normalise_file("train.json", raw, fps=5)
    video = result.videos["v_AAAAAAAAAAA"]
    assert [(s.start, s.end, s.caption) for s in video.segments] == [(2, 10.0, "a"), (6, 9, "b")]
    reasons = {f.key: [] for f in result.failures}
    for f in result.failures:
        reasons[f.key].append(f.reason)
    joined = " | ".join(reasons["v_AAAAAAAAAAA"])
    for expected in ["end <= start", "negative start", "empty sentence", "at or after the duration", "no frame of the 5 fps grid"]:
        assert expected in joined
    assert "does not match" in reasons["../../x"][0]
    assert "malformed entry" in reasons["v_BBBBBBBBBBB"][0]
    assert "not positive" in reasons["v_CCCCCCCCCCC"][0]
    assert set(result.videos) == {"v_AAAAAAAAAAA"}


def test_same_video_in_train_and_test_is_removed_from_both(tmp_path):
    entry = {"duration": 5, "timestamps": [[0, 1]], "sentences": ["a"]}
    zip_path = tmp_path / "captions.zip"
    write_captions_zip(zip_path, {"train.json": {"v_DDDDDDDDDDD": entry, "v_EEEEEEEEEEE": entry},
                                  "val_1.json": {"v_DDDDDDDDDDD": entry}, "val_2.json": {}})
    files = load_annotations(zip_path, fps=5)
    assert "v_DDDDDDDDDDD" not in files["train.json"].videos and "v_DDDDDDDDDDD" not in files["val_1.json"].videos
    assert "v_EEEEEEEEEEE" in files["train.json"].videos
    assert [f.key for f in files["val_1.json"].failures] == ["v_DDDDDDDDDDD"]


def test_malformed_json_names_file_and_position(tmp_path):
    with pytest.raises(AnnotationError, match=r"val_1.json: malformed JSON at line 2 column"):
        parse_json("val_1.json", b'{"v_AAAAAAAAAAA": {\n  "duration": ,}}')
    zip_path = tmp_path / "captions.zip"
    write_captions_zip(zip_path, {"train.json": {}, "val_1.json": b"{not json", "val_2.json": {}})
    with pytest.raises(AnnotationError, match="val_1.json: malformed JSON at line 1 column 2"):
        load_annotations(zip_path, fps=5)


def test_bad_zip_and_missing_member_are_clear(tmp_path):
    bad = tmp_path / "captions.zip"
    bad.write_bytes(b"<html>not a zip</html>")
    with pytest.raises(AnnotationError, match="not a valid zip"):
        read_zip(bad)
    write_captions_zip(bad, {"train.json": {}, "val_1.json": {}})
    with pytest.raises(AnnotationError, match="missing val_2.json"):
        read_zip(bad)


@pytest.mark.parametrize("hostile", ["v_abcdefghijk\n", "v_abcdefghijk/../x", "../v_abcdefghi", "-v_abcdefghij",
                                     "v_abc defghij", "v_abcdefghijkl"])
def test_an_id_is_matched_whole_before_it_becomes_a_file_name(hostile):
    """Ids become file names and command arguments: `re.match` with `$` let a trailing newline in."""
    good = {"duration": 10.0, "timestamps": [[0.0, 5.0]], "sentences": ["a cat"]}
    result = normalise_file("train.json", {hostile: good, "v_abcdefghijk": good}, fps=5)
    assert list(result.videos) == ["v_abcdefghijk"]
    assert [f.key for f in result.failures] == [hostile] and "does not match" in result.failures[0].reason


def test_huge_numbers_and_deep_nesting_are_errors_that_name_the_file_or_the_video():
    """A huge JSON integer raised OverflowError and deep nesting RecursionError out of the whole
    annotation load, with no file name."""
    with pytest.raises(AnnotationError, match="val_1.json: unreadable JSON"):
        parse_json("val_1.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(AnnotationError, match="val_1.json: unreadable JSON"):
        parse_json("val_1.json", '{"v_abcdefghijk": {"duration": ' + "9" * 5000 + "}}")
    good = {"duration": 10.0, "timestamps": [[0.0, 5.0]], "sentences": ["a cat"]}
    huge = {"duration": 10**400, "timestamps": [[0.0, 5.0]], "sentences": ["a cat"]}
    result = normalise_file("train.json", {"v_hugenumber0": huge, "v_abcdefghijk": good}, fps=5)
    assert list(result.videos) == ["v_abcdefghijk"]
    assert result.failures[0].key == "v_hugenumber0" and "OverflowError" in result.failures[0].reason


def test_bounds_on_annotation_files(tmp_path):
    """A 0.4 MB zip holding 400 MB of JSON, a video of 10^6 segments and a duration of 1e9 s were
    all accepted."""
    import zipfile

    bomb = tmp_path / "captions.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train.json", "{" + " " * 30_000_000 + "}")
        archive.writestr("val_1.json", "{}")
        archive.writestr("val_2.json", "{}")
    assert bomb.stat().st_size < 100_000
    with pytest.raises(AnnotationError, match="train.json is 30 MB uncompressed, more than activitynet.max_annotation_mb"):
        load_annotations(bomb, fps=5, max_mb=10)
    many = {"duration": 100.0, "timestamps": [[0.0, 1.0]] * 2000, "sentences": ["a"] * 2000}
    long = {"duration": 1e9, "timestamps": [[0.0, 5.0]], "sentences": ["a cat"]}
    good = {"duration": 10.0, "timestamps": [[0.0, 5.0]], "sentences": ["a cat"]}
    result = normalise_file("train.json", {"v_manysegment": many, "v_verylongvid": long, "v_abcdefghijk": good},
                            fps=5, max_segments=1000, max_duration_s=14400)
    assert list(result.videos) == ["v_abcdefghijk"]
    reasons = {f.key: f.reason for f in result.failures}
    assert "2000 segments, more than activitynet.max_segments_per_video (1000)" in reasons["v_manysegment"]
    assert "more than activitynet.download.max_duration_s (14400)" in reasons["v_verylongvid"]

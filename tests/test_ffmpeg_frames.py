"""Frame timing through the real decode path: every synthetic frame shows its own source index."""

import numpy as np
import pytest

from clipmemcap.frames.ffmpeg_frames import DecodeError, decode_range
from clipmemcap.sources.synthetic import draw_frame, read_frame_index, write_video


@pytest.mark.parametrize("width,height,src_fps", [(640, 360, 30), (360, 640, 25), (320, 240, 24)])
def test_each_sampled_frame_is_the_one_on_screen_at_t(tmp_path, width, height, src_fps):
    path = tmp_path / "coded.mp4"
    write_video(path, 7.0, width, height, src_fps)
    for frames in (range(0, 35), range(3, 4), range(12, 27)):
        decoded = np.concatenate(list(decode_range(path, frames, 5, 224, block=8)))
        assert decoded.shape == (len(frames), 224, 224, 3)
        shown = np.array([read_frame_index(f) for f in decoded])
        # the source frame on screen at t = k / 5 is floor(t * src_fps)
        expected = np.floor(np.array(frames) / 5 * src_fps + 1e-9).astype(int)
        assert np.abs(shown - expected).max() <= 1, (shown, expected)


def test_ntsc_rate_stays_within_one_source_frame(tmp_path):
    path = tmp_path / "ntsc.mp4"
    write_video(path, 5.0, 480, 270, 30)
    ntsc = tmp_path / "ntsc2997.mp4"
    import subprocess
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-vf", "setpts=PTS*30/(30000/1001)",
                    "-r", "30000/1001", "-c:v", "libx264", "-crf", "18", str(ntsc)], check=True)
    decoded = np.concatenate(list(decode_range(ntsc, range(2, 20), 5, 224)))
    shown = np.array([read_frame_index(f) for f in decoded])
    expected = np.floor(np.arange(2, 20) / 5 * 30000 / 1001 + 1e-9).astype(int)
    assert np.abs(shown - expected).max() <= 1


def test_code_survives_the_crop_it_is_read_from():
    frame = draw_frame(1234, 224, 224, (10, 200, 30))
    assert read_frame_index(frame) == 1234


def test_video_shorter_than_requested_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "short.mp4"
    write_video(path, 2.0, 320, 240)
    with pytest.raises(DecodeError, match=r"short.mp4: decoded 10 of 20 frames"):
        list(decode_range(path, range(0, 20), 5, 224))


def test_garbage_is_a_decode_error(tmp_path):
    path = tmp_path / "junk.mp4"
    path.write_bytes(b"\x00\x01junk" * 1000)
    with pytest.raises(DecodeError, match="junk.mp4"):
        list(decode_range(path, range(0, 5), 5, 224))


def test_a_video_beyond_its_bounds_is_refused_before_decoding(tmp_path):
    """Frame size and duration are read by ffprobe and checked before any frame is decoded (a
    16000x16000 or a 10-hour video was accepted); the file is passed as file:, so a name that
    starts with '-' is a file, not an option (`-report` made ffprobe write a log)."""
    from clipmemcap.core.config import DownloadConfig
    from clipmemcap.sources.http import PermanentDownloadError
    from clipmemcap.sources.video_download import probe_video
    from clipmemcap.sources.synthetic import write_video

    path = tmp_path / "-report.mp4"
    write_video(path, 3.0, 320, 240)
    assert probe_video(path, DownloadConfig()) == pytest.approx(3.0, abs=0.1)
    assert not list(tmp_path.glob("ffprobe-*.log"))
    with pytest.raises(PermanentDownloadError, match="frames of 320x240 are more than max_pixels"):
        probe_video(path, DownloadConfig(max_pixels=320 * 239))
    with pytest.raises(PermanentDownloadError, match="longer than max_duration_s"):
        probe_video(path, DownloadConfig(max_duration_s=2.0))

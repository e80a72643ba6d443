"""decode || CLIP pipeline: order, equality across worker counts, failures passed through."""

import numpy as np

from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.core.config import ClipConfig
from clipmemcap.core.failures import Failure
from clipmemcap.frames.embed import Embedded, VideoJob, embed_videos
from clipmemcap.sources.synthetic import write_video


def test_outcomes_keep_job_order_and_do_not_depend_on_worker_count(tmp_path):
    jobs = []
    for i, duration in enumerate([3.0, 1.0, 4.0, 2.0, 3.0]):
        path = tmp_path / f"v_{i:011d}.mp4"
        write_video(path, duration, 320, 240)
        jobs.append(VideoJob(path.stem, path, (range(round(duration * 5)),)))
    broken = tmp_path / "v_broken00000.mp4"
    broken.write_bytes(b"not a video")
    jobs.insert(2, VideoJob(broken.stem, broken, (range(round(2.0 * 5)),)))
    jobs.insert(4, Failure("v_failed00000", "download", "404"))
    encoder = ClipEncoder(ClipConfig(model="TinyViT", pretrained=None, device="cpu", batch_size=4))

    runs = [list(embed_videos(iter(jobs), encoder, 5, decode_workers=w, prefetch_blocks=1)) for w in (1, 3)]
    for outcomes in runs:
        ids = [o.video_id if isinstance(o, Embedded) else o.key for o in outcomes]
        assert ids == [j.video_id if isinstance(j, VideoJob) else j.key for j in jobs]
        assert isinstance(outcomes[2], Failure) and outcomes[2].stage == "decode"
        assert outcomes[4] == jobs[4]
        for job, outcome in zip(jobs, outcomes):
            if isinstance(outcome, Embedded):
                assert len(outcome.times) == len(job.frames[0]) == len(outcome.embeddings)
    for a, b in zip(*runs):
        if isinstance(a, Embedded):
            np.testing.assert_array_equal(a.times, b.times)
            np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=1e-5, atol=1e-6)


def test_abandoned_pipeline_stops_its_threads(tmp_path):
    import threading

    path = tmp_path / "v_longvideo00.mp4"
    write_video(path, 6.0, 320, 240)
    jobs = [VideoJob(path.stem, path, (range(round(6.0 * 5)),))] * 4
    encoder = ClipEncoder(ClipConfig(model="TinyViT", pretrained=None, device="cpu", batch_size=2))
    outcomes = embed_videos(iter(jobs), encoder, 5, decode_workers=2, prefetch_blocks=1)
    next(outcomes)
    outcomes.close()
    threading.Event().wait(0.5)
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]

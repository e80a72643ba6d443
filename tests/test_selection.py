from clipmemcap.core.config import SubsetConfig
from clipmemcap.core.failures import Failure
from clipmemcap.sources.activitynet import Segment, Video
from clipmemcap.sources.selection import fill, plan_streams


def videos(prefix, n):
    return {f"v_{prefix}{i:010d}": Video(f"v_{prefix}{i:010d}", 10.0, (Segment(0, 0.0, 5.0, "x"),)) for i in range(n)}


def run(stream, bad):
    while stream.missing() and not stream.exhausted():
        for video in stream.next_wave():
            if video.video_id not in bad:
                stream.accept(video)
    return {split: [v.video_id for v in vs] for split, vs in stream.chosen.items()}


def test_seeded_choice_is_deterministic_disjoint_and_replaces_failures():
    train, test = videos("a", 50), videos("b", 20)
    cfg = SubsetConfig(train_videos=10, test_videos=5, val_fraction=0.2, seed=3)
    first = run(plan_streams(train, test, cfg)[0], bad=set())
    assert first == run(plan_streams(train, test, cfg)[0], bad=set())
    assert len(first["train"]) == 10 and len(first["val"]) == 2
    assert not set(first["train"]) & set(first["val"])
    assert first != run(plan_streams(train, test, cfg.model_copy(update={"seed": 4}))[0], bad=set())
    # a failed candidate is replaced by the next one in seeded order; the others keep their places
    failed = first["train"][3]
    second = run(plan_streams(train, test, cfg)[0], bad={failed})
    assert failed not in second["train"] and len(second["train"]) == 10
    assert second["train"][:3] == first["train"][:3]


def test_running_out_of_candidates_is_reported():
    stream = plan_streams(videos("a", 4), {}, SubsetConfig(train_videos=5, test_videos=0, val_fraction=0.0))[0]
    run(stream, bad={"v_a0000000001"})
    assert stream.shortfall() == {"train": 2}


def test_fill_skips_finished_videos_replaces_failures_and_accepts_in_candidate_order():
    """The flow's rule of which videos enter the dataset, without Prefect: ``process`` here
    finishes its videos in reverse order, and one of them fails."""
    cfg = SubsetConfig(train_videos=4, test_videos=0, val_fraction=0.25)
    order = plan_streams(videos("a", 12), {}, cfg)[0].candidates
    stream = plan_streams(videos("a", 12), {}, cfg)[0]
    finished, bad = {order[1].video_id}, order[2].video_id  # an earlier run did order[1]
    processed, accepted = [], []

    def process(wave):
        processed.append([v.video_id for v in wave])
        for video in reversed(wave):
            yield Failure(video.video_id, "download", "404") if video.video_id == bad else video.video_id

    failures = fill(stream, lambda video: video.video_id in finished, process, accepted.append)
    assert [f.key for f in failures] == [bad]
    assert order[1].video_id not in sum(processed, [])  # never processed again
    assert processed == [[v.video_id for v in order[:5] if v.video_id not in finished], [order[5].video_id]]
    expected = [order[0], order[1], order[3], order[4], order[5]]  # the failure replaced by the next candidate
    assert accepted == expected
    assert stream.chosen == {"train": expected[:4], "val": expected[4:]}
    assert not stream.missing()

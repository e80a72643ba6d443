from clipmemcap.activitynet import Segment, Video
from clipmemcap.config import SubsetConfig
from clipmemcap.selection import plan_streams


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

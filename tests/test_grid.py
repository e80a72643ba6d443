from clipmemcap.core.grid import grid_index, grid_range, merge_ranges


def test_grid_owns_start_inclusive_end_exclusive():
    assert list(grid_range(0.0, 1.0, 5)) == [0, 1, 2, 3, 4]
    assert list(grid_range(0.2, 0.6, 5)) == [1, 2]  # 0.6 * 5 = 3.0000000000000004 must not add frame 3
    assert list(grid_range(0.21, 0.61, 5)) == [2, 3]
    assert len(grid_range(1.01, 1.1, 5)) == 0


def test_grid_index_is_the_first_frame_at_or_after_t():
    assert grid_index(0.0, 5) == 0 and grid_index(0.2, 5) == 1 and grid_index(0.201, 5) == 2


def test_merge_joins_overlapping_and_touching_ranges_only():
    merged = merge_ranges([range(10, 20), range(0, 5), range(5, 8), range(15, 30), range(40, 41), range(3, 3)])
    assert merged == [range(0, 8), range(10, 30), range(40, 41)]

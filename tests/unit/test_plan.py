"""data.plan: the sharding invariants, as pure arithmetic (no Ray, no files)."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.data import plan
from orchestrator.data.index import DatasetIndex, RowGroup
from orchestrator.errors import DataError


def make_index(row_group_sizes: list[list[int]]) -> DatasetIndex:
    """An index of files with uneven row groups; only the footer arithmetic matters here."""
    groups, first = [], 0
    for f, sizes in enumerate(row_group_sizes):
        for i, n in enumerate(sizes):
            groups.append(RowGroup(file=f, index=i, num_rows=n, first_row=first))
            first += n
    return DatasetIndex(
        url="memory://plan",
        files=tuple(f"/f{f}.parquet" for f in range(len(row_group_sizes))),
        row_groups=tuple(groups),
        features=("x",),
        label="y",
        num_rows=first,
    )


UNEVEN = make_index([[1000, 1000, 37], [5], [700, 300, 999, 1], [2500]])


def rank_ids(index, epoch_plan, lanes, world, rank, holdout=0.0) -> list[np.ndarray]:
    """Global row ids rank `rank` trains on, batch by batch."""
    out = []
    for b in range(epoch_plan.batches):
        ids = []
        for lane in plan.owned_lanes(lanes, world, rank):
            groups, offsets = epoch_plan.locate(epoch_plan.chunk_positions(lane, b))
            for g, o in zip(groups, offsets):
                rg = index.row_groups[g]
                local = plan.train_rows(rg.first_row, rg.num_rows, holdout)[o]
                ids.append(rg.first_row + local)
        out.append(np.array(ids, dtype=np.int64))
    return out


def epoch(index=UNEVEN, seed=0, e=0, batch=256, lanes=8, window=300, holdout=0.0):
    return plan.plan_epoch(
        index, seed=seed, epoch=e, batch_size=batch, lanes=lanes, window_rows=window, holdout_fraction=holdout
    )


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_read_disjoint_rows_that_cover_the_epoch_minus_the_reported_drop(world):
    p = epoch(holdout=0.1)
    per_rank = [np.concatenate(rank_ids(UNEVEN, p, 8, world, r, holdout=0.1)) for r in range(world)]
    everything = np.concatenate(per_rank)
    assert len(np.unique(everything)) == len(everything), "a row was read twice"
    assert len(everything) == p.stream_rows - p.dropped == p.batches * 256
    assert 0 <= p.dropped < 256
    held_out = {
        rg.first_row + int(i)
        for rg in UNEVEN.row_groups
        for i in plan.holdout_rows(rg.first_row, rg.num_rows, 0.1)
    }
    assert not held_out & set(everything.tolist()), "a validation row was trained on"


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_rank_gets_the_same_number_of_batches(world):
    p = epoch()
    counts = {len(rank_ids(UNEVEN, p, 8, world, r)) for r in range(world)}
    assert counts == {p.batches}


def test_global_batch_sets_are_identical_across_world_sizes():
    p = epoch(seed=3, e=2)
    reference = None
    for world in (1, 2, 4):
        ranks = [rank_ids(UNEVEN, p, 8, world, r) for r in range(world)]
        batches = [frozenset(np.concatenate([r[b] for r in ranks]).tolist()) for b in range(p.batches)]
        reference = reference or batches
        assert batches == reference


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a = rank_ids(UNEVEN, epoch(seed=7, e=1), 8, 2, 0)
    b = rank_ids(UNEVEN, epoch(seed=7, e=1), 8, 2, 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_epochs_and_seeds_give_different_orders():
    first = np.concatenate(rank_ids(UNEVEN, epoch(e=0), 8, 1, 0))
    second = np.concatenate(rank_ids(UNEVEN, epoch(e=1), 8, 1, 0))
    other_seed = np.concatenate(rank_ids(UNEVEN, epoch(seed=1, e=0), 8, 1, 0))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, other_seed)


def test_batches_mix_rows_from_many_row_groups():
    p = epoch(window=4096)
    first_batch = np.concatenate([ids[0] for ids in [rank_ids(UNEVEN, p, 8, 1, 0)]])
    groups = {next(i for i, rg in enumerate(UNEVEN.row_groups) if rg.first_row <= x < rg.first_row + rg.num_rows)
              for x in first_batch.tolist()}
    assert len(groups) >= 4


def test_rank_shares_add_up_to_the_global_batch_for_any_world_size():
    for batch, lanes in [(256, 8), (1000, 8), (17, 9), (512, 12)]:
        for world in range(1, lanes + 1):
            shares = [plan.rank_batch_rows(batch, lanes, world, r) for r in range(world)]
            assert sum(shares) == batch
            assert min(shares) >= 1


def test_holdout_is_deterministic_and_about_the_requested_fraction():
    a = plan.holdout_rows(first_row=1234, num_rows=1000, fraction=0.1)
    b = plan.holdout_rows(first_row=1234, num_rows=1000, fraction=0.1)
    assert np.array_equal(a, b) and len(a) == 100 and len(np.unique(a)) == 100
    assert len(plan.train_rows(1234, 1000, 0.1)) == 900
    assert not set(a.tolist()) & set(plan.train_rows(1234, 1000, 0.1).tolist())


def test_validation_shares_cover_every_row_once():
    for total in (0, 1, 7, 1000):
        for world in (1, 2, 3, 4):
            shares = [plan.validation_share(total, world, r) for r in range(world)]
            assert shares[0][0] == 0 and shares[-1][1] == total
            assert all(shares[i][1] == shares[i + 1][0] for i in range(world - 1))


def test_too_few_rows_for_one_global_batch_is_a_data_error_naming_the_batch_size():
    with pytest.raises(DataError, match=r"train.batch_size = 10000"):
        epoch(batch=10000)


def test_window_span_covers_every_row_group_a_chunk_reads():
    p = epoch(window=300)
    for lane in range(8):
        for b in range(p.batches):
            groups, _ = p.locate(p.chunk_positions(lane, b))
            assert set(groups.tolist()) <= set(p.groups_in(*p.window_span(lane, b)).tolist())


def test_cursor_round_trips_through_a_dict():
    assert plan.Cursor.from_dict(plan.Cursor(3, 17).to_dict()) == plan.Cursor(3, 17)

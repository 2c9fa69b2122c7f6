"""data.reader: real Parquet files read by rank, with prefetch, resume and validation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.data import plan, source
from orchestrator.data.partials import assemble
from orchestrator.data.preprocess import finish
from orchestrator.data.reader import (
    EndOfEpoch,
    ShardReader,
    decoded_mb,
    default_prefetch,
    fit_in_process,
    fit_nodes,
    validation_batches,
)
from orchestrator.job.columns import ColumnSpec

RAW = {"a": ColumnSpec(transform="none"), "b": ColumnSpec(transform="none"), "x": ColumnSpec(transform="none")}


def fitted(index, holdout=0.0):
    """The preprocessing of `index` fitted on one rank; features kept raw (transform: none) so values show ids."""
    return fit_in_process(index, holdout)

BATCH, LANES = 128, 8


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """Three uneven files; each row's features encode its global id so reads can be checked."""
    root = tmp_path_factory.mktemp("reader")
    first = 0
    for i, (rows, group) in enumerate([(1500, 400), (333, 100), (2200, 1000)]):
        ids = np.arange(first, first + rows)
        table = pa.table({"a": ids.astype(np.float64), "b": (ids * 2).astype(np.int32), "y": ids * 3.0, "junk": ["s"] * rows})
        pq.write_table(table, root / f"part-{i}.parquet", row_group_size=group)
        first += rows
    return source.scan(str(root), label="y", features=["a", "b"], overrides={k: RAW[k] for k in "ab"})


def read_epoch(index, world, rank, cursor=plan.Cursor(), prefetch=2, holdout=0.0):
    reader = ShardReader(
        index, plan.Layout(seed=5, batch_size=BATCH, lanes=LANES, window_rows=500, holdout_fraction=holdout),
        fitted(index, holdout), world_size=world, rank=rank, prefetch_batches=prefetch,
    )
    reader.restore(cursor)
    batches = []
    while True:
        try:
            batches.append(reader.next_batch())
        except EndOfEpoch:
            return batches, reader.state()


def test_each_batch_holds_the_rows_its_ids_name_with_projected_columns(index):
    batches, _ = read_epoch(index, world=2, rank=1)
    pre = fitted(index)
    for batch in batches:
        ids = batch.ids.numpy().astype(np.float64)
        assert batch.numeric.dtype == torch.float32 and batch.numeric.shape[1] == 2 and batch.codes.shape[1] == 0
        assert np.array_equal(batch.numeric[:, 0].numpy(), ids.astype(np.float32))
        assert np.array_equal(batch.numeric[:, 1].numpy(), (ids * 2).astype(np.float32))
        # the regression target is standardized for training
        np.testing.assert_allclose(pre.destandardize(batch.labels.numpy()), ids * 3, rtol=1e-6)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_together_read_the_epoch_once_with_equal_batch_counts(index, world):
    per_rank = [read_epoch(index, world, r, holdout=0.1) for r in range(world)]
    assert len({len(batches) for batches, _ in per_rank}) == 1
    ids = np.concatenate([b.ids.numpy() for batches, _ in per_rank for b in batches])
    assert len(np.unique(ids)) == len(ids)
    train_rows = sum(rg.num_rows - plan.holdout_count(rg.num_rows, 0.1) for rg in index.row_groups)
    assert train_rows - BATCH < len(ids) <= train_rows
    assert all(cursor == plan.Cursor(1, 0) for _, cursor in per_rank)


@pytest.mark.parametrize("world, batch, holdout, window", [
    (1, BATCH, 0.0, 500), (2, BATCH, 0.1, 500), (3, 130, 0.1, 500), (2, 130, 0.1, 1), (1, BATCH, 0.0, 10_000),
])
def test_batches_follow_the_plan_row_for_row(index, world, batch, holdout, window):
    """The reader's blocks and windows are an implementation of the plan: same rows, same order."""
    epoch_plan = plan.plan_epoch(index, seed=5, epoch=0, batch_size=batch, lanes=LANES, window_rows=window,
                                 holdout_fraction=holdout)

    def global_id(position, offset):
        rg = index.row_groups[position]
        kept = plan.train_rows(rg.first_row, rg.num_rows, holdout)
        return rg.first_row + int(kept[offset])

    for rank in range(world):
        reader = ShardReader(index, plan.Layout(seed=5, batch_size=batch, lanes=LANES, window_rows=window,
                                                  holdout_fraction=holdout), fitted(index, holdout),
                             world_size=world, rank=rank)
        for b in range(epoch_plan.batches):
            expected = [
                global_id(int(p), int(o))
                for lane in plan.owned_lanes(LANES, world, rank)
                for p, o in zip(*epoch_plan.locate(epoch_plan.chunk_positions(lane, b)))
            ]
            assert reader.next_batch().ids.tolist() == expected
        with pytest.raises(EndOfEpoch):
            reader.next_batch()


def test_prefetch_is_automatic_only_where_reading_waits_on_something_else():
    assert default_prefetch("/data/train", "cpu") == 0
    assert default_prefetch("file:///data/train", "cpu") == 0
    assert default_prefetch("/data/train", "cuda") > 0
    assert default_prefetch("s3://bucket/train", "cpu") > 0


def test_prefetch_does_not_change_what_is_read(index):
    eager, _ = read_epoch(index, world=2, rank=0, prefetch=0)
    ahead, _ = read_epoch(index, world=2, rank=0, prefetch=4)
    assert all(torch.equal(a.ids, b.ids) and torch.equal(a.numeric, b.numeric) for a, b in zip(eager, ahead))


def test_resident_data_gives_the_same_batches_as_streaming_epoch_after_epoch_and_after_a_restore(index):
    layout = plan.Layout(seed=5, batch_size=BATCH, lanes=LANES, window_rows=500, holdout_fraction=0.1)
    pre = fitted(index, 0.1)

    def epochs(resident: bool, restore_at: plan.Cursor | None = None) -> list[list]:
        reader = ShardReader(index, layout, pre, world_size=2, rank=1, resident=resident)
        if restore_at:
            reader.restore(restore_at)
        out: list[list] = [[]]
        while len(out) <= 3:
            try:
                out[-1].append(reader.next_batch())
            except EndOfEpoch:
                out.append([])
        assert resident == (reader._resident is not None and len(reader._resident) > 0)
        return out[:3]

    streamed, resident = epochs(False), epochs(True)
    for a, b in zip(sum(streamed, []), sum(resident, [])):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.numeric, b.numeric) and torch.equal(a.labels, b.labels)
    assert [b.ids.tolist() for b in streamed[0]] != [b.ids.tolist() for b in streamed[1]]  # epochs do differ
    restored = epochs(True, restore_at=plan.Cursor(1, 5))
    assert [b.ids.tolist() for b in restored[0]] == [b.ids.tolist() for b in streamed[1][5:]]
    assert [b.ids.tolist() for b in restored[1]] == [b.ids.tolist() for b in streamed[2]]


def test_the_decoded_size_counts_every_input_column_the_label_and_the_row_id(index):
    rows = sum(rg.num_rows for rg in index.row_groups)
    assert decoded_mb(index, fitted(index)) == rows * (2 * 4 + 4 + 8) / 2**20  # a, b numeric; float32 label; id
    assert decoded_mb(None, fitted(index)) == 0


def test_restoring_a_mid_epoch_cursor_continues_at_exactly_the_next_batch(index):
    whole, _ = read_epoch(index, world=2, rank=0)
    rest, _ = read_epoch(index, world=2, rank=0, cursor=plan.Cursor(0, 7))
    assert [b.ids.tolist() for b in rest] == [b.ids.tolist() for b in whole[7:]]


def test_a_cursor_written_at_one_world_size_resumes_at_another_without_loss_or_repeat(index):
    before = [b.ids for b in read_epoch(index, world=1, rank=0)[0][:5]]
    after = [b.ids for r in range(2) for b in read_epoch(index, world=2, rank=r, cursor=plan.Cursor(0, 5))[0]]
    seen = torch.cat(before + after).numpy()
    reference = torch.cat([b.ids for b in read_epoch(index, world=1, rank=0)[0]]).numpy()
    assert len(np.unique(seen)) == len(seen)
    assert set(seen.tolist()) == set(reference.tolist())


def test_validation_batches_cover_the_held_out_rows_once_across_ranks(index):
    expected = {
        rg.first_row + int(i) for rg in index.row_groups for i in plan.holdout_rows(rg.first_row, rg.num_rows, 0.1)
    }
    seen = []
    for rank in range(3):
        for batch in validation_batches(index, fitted(index, 0.1), world_size=3, rank=rank, batch_rows=64, holdout_fraction=0.1):
            assert len(batch) <= 64
            seen += batch.ids.tolist()
    assert len(seen) == len(set(seen)) and set(seen) == expected


def test_a_separate_validation_dataset_is_read_whole(index):
    seen = [
        i
        for rank in range(2)
        for batch in validation_batches(index, fitted(index), world_size=2, rank=rank, batch_rows=1000, holdout_fraction=None)
        for i in batch.ids.tolist()
    ]
    assert sorted(seen) == list(range(index.num_rows))


@pytest.mark.parametrize("label_dtype", ["int64", "float32"], ids=["cross_entropy", "bce"])
def test_validation_batches_hand_torch_only_writable_arrays(tmp_path, monkeypatch, label_dtype):
    """torch warns "The given NumPy array is not writable" for a read-only array (once per process,
    so the arrays are checked, not the warning): every column kind, both label encodings."""
    from orchestrator.data import synthetic
    from orchestrator.job import spec

    synthetic.write(spec.GenerateSpec(kind="mixed", rows=1500, files=2), str(tmp_path))
    mixed = source.scan(str(tmp_path), "churned", exclude=("user_id",), classification=True)
    handed = []
    from_numpy = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda array: handed.append(array.flags.writeable) or from_numpy(array))

    batches = list(validation_batches(mixed, fitted(mixed), world_size=1, rank=0, batch_rows=500,
                                      holdout_fraction=None, label_dtype=label_dtype))

    assert batches and handed == [True] * (4 * len(batches))


def test_a_remote_fsspec_dataset_is_read_through_read_ahead_blocks():
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/reader-remote/a.parquet", "wb") as f:
        pq.write_table(pa.table({"x": np.arange(3000, dtype=np.float32), "y": np.arange(3000.0)}), f, row_group_size=700)
    remote = source.scan("memory://reader-remote/", "y", overrides={"x": RAW["x"]})
    batches, _ = read_epoch(remote, world=2, rank=1)
    for batch in batches:
        assert np.array_equal(batch.numeric[:, 0].numpy(), batch.ids.numpy().astype(np.float32))
    fs.rm("/reader-remote", recursive=True)


def test_the_fitted_preprocessing_is_bit_identical_for_1_2_and_4_workers_on_uneven_files(tmp_path):
    from orchestrator.data import synthetic
    from orchestrator.job.spec import GenerateSpec

    synthetic.write(GenerateSpec(kind="mixed", rows=3000, files=3, seed=2), str(tmp_path))
    index = source.scan(str(tmp_path), "churned", exclude=["user_id"], classification=True)
    fitted, n = set(), len(index.row_groups)
    for world in (1, 2, 4):
        nodes = {span: partial for rank in range(world) for span, partial in fit_nodes(index, 0.2, world, rank).items()}
        covered = sorted(i for lo, hi in nodes for i in range(lo, hi))
        assert covered == list(range(n))  # every row group in exactly one rank's nodes
        fitted.add(finish(index.columns, assemble(index.columns, nodes, 0, n)).to_json())
    assert len(fitted) == 1
    # and the same as merging every row group's partial in one process
    assert fitted == {fit_in_process(index, 0.2).to_json()}

import torch

from chargen.data.batches import Cursor, EvalStreams, StreamBatches


def test_streams_are_contiguous_columns_with_targets_shifted_by_one() -> None:
    ids = torch.arange(13, dtype=torch.uint8)
    batches = StreamBatches(ids, batch_size=3, seq_len=2)
    assert batches.inputs.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert batches.targets.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]


def test_windows_follow_each_other_and_wrap_into_the_next_epoch() -> None:
    batches = StreamBatches(torch.arange(13), batch_size=3, seq_len=3)
    x, _, cursor, new_epoch = batches.window(Cursor())
    assert new_epoch and x.tolist() == [[0, 1, 2], [4, 5, 6], [8, 9, 10]]
    x, _, cursor, new_epoch = batches.window(cursor)
    assert not new_epoch and x.tolist() == [[3], [7], [11]]  # short last window
    assert cursor == Cursor(epoch=1, offset=0)
    assert batches.windows_per_epoch == 2


def test_each_target_is_used_exactly_once_per_epoch() -> None:
    n = 1000
    batches = StreamBatches(torch.arange(n), batch_size=7, seq_len=13)
    seen: list[int] = []
    cursor = Cursor()
    while cursor.epoch == 0:
        _, y, cursor, _ = batches.window(cursor)
        seen.extend(y.flatten().tolist())
    assert sorted(seen) == list(range(1, batches.tokens_per_epoch + 1))
    assert n - 1 - batches.tokens_per_epoch < 7  # at most one token per stream left over


def read_all(streams: EvalStreams, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The windows side by side: (rows, length) each."""
    parts = list(zip(*streams.windows(width)))
    return tuple(torch.cat(p, dim=1) for p in parts)  # type: ignore[return-value]


def test_eval_streams_score_every_target_once_after_a_warm_up() -> None:
    ids = torch.arange(1001)
    inputs, targets, scored = read_all(EvalStreams.build(ids, rows=4, burn_in=50), width=64)
    assert sorted(targets[scored].tolist()) == list(range(1, 1001))
    assert not scored[1, :50].any()  # row 1 warms up on the 50 tokens before its segment
    assert inputs[1, 0].item() == 250 - 50
    assert torch.equal(targets[scored], inputs[scored] + 1)


def test_eval_streams_on_a_tiny_text_use_one_row() -> None:
    inputs, _, _ = read_all(EvalStreams.build(torch.arange(5), rows=16, burn_in=256), width=512)
    assert inputs.shape == (1, 4)


def test_eval_windows_are_the_same_whatever_their_width() -> None:
    streams = EvalStreams.build(torch.arange(3000, dtype=torch.int16), rows=5, burn_in=40)
    wide, narrow = read_all(streams, width=4096), read_all(streams, width=7)
    assert all(torch.equal(a, b) for a, b in zip(wide, narrow))


def test_a_block_of_rows_serves_those_rows_of_the_full_batch() -> None:
    ids = torch.arange(1000)
    full = StreamBatches(ids, batch_size=8, seq_len=10)
    block = StreamBatches(ids, batch_size=8, seq_len=10, rows=range(2, 5))
    cursor = Cursor()
    for _ in range(30):
        x, y, after, new_epoch = full.window(cursor)
        bx, by, block_after, block_new_epoch = block.window(cursor)
        assert torch.equal(bx, x[2:5]) and torch.equal(by, y[2:5])
        assert (block_after, block_new_epoch) == (after, new_epoch)
        cursor = after

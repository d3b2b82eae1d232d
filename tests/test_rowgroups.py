import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from chargen.training.rowgroups import row_groups
from chargen.training.trainer import Trainer
from tests.helpers import Recorder, start


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two intra-op threads for one test (the suite runs on one): the count the step splits by."""
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def test_groups_split_the_streams_evenly_and_keep_thin_batches_whole() -> None:
    assert row_groups(64, 2) == [slice(0, 32), slice(32, 64)]
    assert [g.stop - g.start for g in row_groups(65, 3)] == [21, 22, 22]
    assert row_groups(64, 1) == [slice(0, 64)]
    assert row_groups(12, 2) == [slice(0, 12)]  # 6 rows a thread would be too thin
    assert row_groups(16, 8) == [slice(0, 8), slice(8, 16)]


def _trainer(corpus: Path, out: Path) -> Trainer:
    # Two layers with dropout and weight drop (the default), as a real run has them.
    return start(corpus, out, Recorder(), batch_size=16, max_steps=10**6)


def _one_step(trainer: Trainer) -> tuple[float, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    trainer.model.train()
    loss = float(trainer.loss_and_gradients())
    assert trainer._next_state is not None
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss, grads, tuple(s.detach().clone() for s in trainer._next_state)


def test_a_step_by_rows_computes_the_whole_batchs_step(corpus_file: Path, tmp_path: Path, two_threads: None) -> None:
    """Same masks, loss, gradients and next state as one thread's step over the whole batch."""
    torch.set_num_threads(1)
    whole = _one_step(_trainer(corpus_file, tmp_path / "a.pt"))
    torch.set_num_threads(2)
    trainer = _trainer(corpus_file, tmp_path / "b.pt")
    seen: set[str] = set()
    trainer.model.embed.register_forward_hook(lambda *_: seen.add(threading.current_thread().name))
    by_rows = _one_step(trainer)

    assert len(seen) == 2 and all(name.startswith("chargen-rows") for name in seen)
    assert by_rows[0] == pytest.approx(whole[0], rel=1e-6)
    assert by_rows[1].keys() == whole[1].keys()
    for name, grad in whole[1].items():
        torch.testing.assert_close(by_rows[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for mine, theirs in zip(by_rows[2], whole[2], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert torch.get_num_threads() == 2  # the workers' one thread stays theirs


def test_training_by_rows_repeats_from_a_seed(corpus_file: Path, tmp_path: Path, two_threads: None) -> None:
    runs = []
    for name in ("a.pt", "b.pt"):
        recorder = Recorder()
        start(corpus_file, tmp_path / name, recorder, batch_size=16, max_steps=12).run()
        runs.append(recorder.losses)
    assert runs[0] == runs[1] and len(runs[0]) == 12

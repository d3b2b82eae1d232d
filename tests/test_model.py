import pytest
import torch

from chargen.config import ModelConfig
from chargen.errors import ConfigError
from chargen.model import CharLM, detach_state


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_forward_shapes_and_carried_state(cell: str) -> None:
    model = CharLM(ModelConfig(vocab_size=11, cell=cell, layers=2, hidden=16))
    ids = torch.randint(0, 11, (3, 5))
    logits, state = model(ids)
    assert logits.shape == (3, 5, 11)
    assert all(s.shape == (2, 3, 16) for s in state)
    # Reading in two halves with the state carried equals reading in one go.
    model.eval()
    whole, _ = model(ids)
    first, mid = model(ids[:, :2])
    second, _ = model(ids[:, 2:], mid)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


def test_lstm_forget_gate_bias_starts_at_one() -> None:
    model = CharLM(ModelConfig(vocab_size=5, hidden=8, layers=1))
    total = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    assert total[8:16].eq(1).all() and total[:8].eq(0).all() and total[16:].eq(0).all()


def test_tied_weights_share_one_tensor() -> None:
    model = CharLM(ModelConfig(vocab_size=7, hidden=8, tie_weights=True))
    assert model.head.weight is model.embed.weight


def test_tying_needs_matching_sizes() -> None:
    with pytest.raises(ConfigError, match="--tie-weights"):
        ModelConfig(vocab_size=7, hidden=8, embed=4, tie_weights=True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hidden", 0, "--hidden"),
        ("layers", 0, "--layers"),
        ("dropout", 1.0, "--dropout"),
        ("weight_drop", 1.0, "--weight-drop"),
        ("cell", "tcn", "--cell"),
    ],
)
def test_nonsense_shapes_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(vocab_size=7, **{field: value})


def test_detached_state_has_no_graph() -> None:
    model = CharLM(ModelConfig(vocab_size=5, hidden=4, layers=1))
    _, state = model(torch.zeros(1, 3, dtype=torch.long))
    assert all(s.grad_fn is not None for s in state)
    assert all(s.grad_fn is None for s in detach_state(state))

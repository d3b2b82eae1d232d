import pytest
import torch
from torch import nn

from chargen.config import ModelConfig
from chargen.model import CharLM
from chargen.model.dropout import dropout, effective_rate, layer_by_layer, run_stack

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@pytest.mark.parametrize("p", [0.1, 0.5, 0.003])
def test_drops_at_the_rate_and_keeps_the_expectation(p: float) -> None:
    torch.manual_seed(0)
    ones = torch.ones(2_000_000)
    out = dropout(ones, p, training=True)
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / len(ones)) ** 0.5 + 1e-4
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - effective_rate(p))))
    assert abs(out.mean().item() - 1) < 0.01


def test_every_position_is_dropped_alike() -> None:
    """Four mask elements come from each 64-bit draw: none of the four lanes may be biased."""
    torch.manual_seed(1)
    out = dropout(torch.ones(400_000, 4), 0.25, training=True)
    for lane in (out == 0).double().mean(0).tolist():
        assert abs(lane - 0.25) < 0.01


def test_gradient_goes_through_the_survivors_only() -> None:
    torch.manual_seed(2)
    x = torch.randn(50, 40, requires_grad=True)
    out = dropout(x, 0.3, training=True)
    out.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, (out != 0).float() / (1 - effective_rate(0.3)))


def test_off_outside_training_and_at_zero() -> None:
    x = torch.randn(5, 6)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x


def test_the_same_seed_draws_the_same_mask_and_bf16_stays_bf16() -> None:
    x = torch.randn(64, 33).bfloat16()
    torch.manual_seed(7)
    first = dropout(x, 0.2, training=True)
    torch.manual_seed(7)
    assert torch.equal(first, dropout(x, 0.2, training=True))
    assert first.dtype == torch.bfloat16


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_layer_by_layer_is_the_fused_stack(cell: str) -> None:
    """With nothing between the layers, the per-layer calls compute exactly what the fused call
    does: outputs, final states and gradients."""
    torch.manual_seed(3)
    rnn = CELLS[cell](6, 8, num_layers=3, batch_first=True)
    x = torch.randn(4, 7, 6)
    state = (torch.randn(3, 4, 8), torch.randn(3, 4, 8)) if cell == "lstm" else torch.randn(3, 4, 8)
    fused_out, fused_state = rnn(x, state)
    fused_out.sum().backward()
    fused_grads = [p.grad.clone() for p in rnn.parameters()]
    rnn.zero_grad()
    out, final = layer_by_layer(rnn, x, state, lambda h: h)
    out.sum().backward()
    torch.testing.assert_close(out, fused_out)
    torch.testing.assert_close(final, fused_state)
    for grad, fused in zip((p.grad for p in rnn.parameters()), fused_grads, strict=True):
        torch.testing.assert_close(grad, fused)


def test_training_drops_between_layers_and_evaluation_does_not() -> None:
    torch.manual_seed(4)
    rnn = nn.LSTM(6, 8, num_layers=2, batch_first=True)
    x, state = torch.randn(4, 7, 6), (torch.zeros(2, 4, 8), torch.zeros(2, 4, 8))
    rnn.eval()
    plain, _ = rnn(x, state)
    torch.testing.assert_close(run_stack(rnn, x, state, 0.5)[0], plain)
    rnn.train()
    dropped, _ = run_stack(rnn, x, state, 0.5)
    assert not torch.allclose(dropped, plain)


def test_a_model_with_dropout_trains_repeatably_from_a_seed() -> None:
    def one_step() -> list[float]:
        torch.manual_seed(5)
        model = CharLM(ModelConfig(vocab_size=9, layers=2, hidden=16, dropout=0.2))
        ids = torch.randint(0, 9, (3, 10))
        nats, _ = model.nll(ids[:, :-1], ids[:, 1:])
        nats.mean().backward()
        return [nats.mean().item(), model.rnn.weight_hh_l0.grad.norm().item()]

    assert one_step() == one_step()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_weight_drop_runs_each_layer_on_its_recurrent_weights_with_one_mask_dropped(cell: str) -> None:
    """Training with weight drop computes the stack whose W_hh lost a share of its elements (one
    mask per call, drawn by `dropout` from torch's generator), gradients included: a dropped
    weight gets none. Evaluation uses the whole matrix."""
    rnn = CELLS[cell](6, 8, num_layers=2, batch_first=True)
    x = torch.randn(4, 7, 6)
    state = (torch.randn(2, 4, 8), torch.randn(2, 4, 8)) if cell == "lstm" else torch.randn(2, 4, 8)
    torch.manual_seed(6)
    masks = [dropout(torch.ones_like(rnn.weight_hh_l0), 0.4, training=True) for _ in range(2)]
    reference = CELLS[cell](6, 8, num_layers=2, batch_first=True)
    reference.load_state_dict(rnn.state_dict())
    with torch.no_grad():
        reference.weight_hh_l0.mul_(masks[0])
        reference.weight_hh_l1.mul_(masks[1])
    expected, expected_state = reference(x, state)

    torch.manual_seed(6)
    out, final = run_stack(rnn, x, state, 0.0, weight_drop=0.4)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(final, expected_state)
    out.sum().backward()
    dropped = masks[0] == 0
    assert 0.2 < dropped.float().mean() < 0.6
    assert rnn.weight_hh_l0.grad[dropped].abs().max() == 0
    assert rnn.weight_hh_l0.grad[~dropped].abs().min() > 0

    rnn.eval()
    torch.testing.assert_close(run_stack(rnn, x, state, 0.0, weight_drop=0.4)[0], rnn(x, state)[0])


def test_each_training_call_draws_a_new_weight_mask() -> None:
    torch.manual_seed(7)
    rnn = nn.LSTM(6, 8, batch_first=True)
    x, state = torch.randn(4, 7, 6), (torch.zeros(1, 4, 8), torch.zeros(1, 4, 8))
    first, _ = run_stack(rnn, x, state, 0.0, weight_drop=0.3)
    second, _ = run_stack(rnn, x, state, 0.0, weight_drop=0.3)
    assert not torch.allclose(first, second)

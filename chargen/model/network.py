"""The language model: embedding -> stacked recurrent layers -> output layer. No I/O here."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from chargen.config import ModelConfig
from chargen.model.dropout import Dropout, Masks, run_stack
from chargen.model.heads import make_output_layer

# LSTM state is (h, c); GRU and RNN state is h alone. Both are kept as a tuple of tensors,
# each (layers, batch, hidden), so carrying, detaching and saving state is one code path.
State = tuple[Tensor, ...]

_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.drop = Dropout(config.dropout)
        self.rnn = _CELLS[config.cell](
            config.embed_dim,
            config.hidden,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = make_output_layer(config)  # full or adaptive softmax (chargen.model.heads)
        if config.tie_weights:
            self.head.weight = self.embed.weight
        self.masks: Masks | None = None  # set by the trainer for each step (chargen.model.dropout.Masks)
        self._init_weights()

    def _init_weights(self) -> None:
        # Unit-variance embeddings drive the first layer's gates from step one (a small init
        # learns markedly slower); a shared matrix must suit the output layer, so it starts smaller.
        # The output layer initialises itself.
        nn.init.normal_(self.embed.weight, std=self.config.hidden**-0.5 if self.config.tie_weights else 1.0)
        if self.config.cell == "lstm":
            hidden = self.config.hidden
            for name, bias in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    # Forget-gate bias 1 (gates are ordered i, f, g, o): remember by default.
                    with torch.no_grad():
                        bias.zero_()
                        bias[hidden : 2 * hidden] = 1.0
                elif name.startswith("bias_hh"):
                    nn.init.zeros_(bias)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        shape = (self.config.layers, batch_size, self.config.hidden)
        count = 2 if self.config.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(count))

    def encode(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) -> the top layer's outputs (B, T, H) and the state after the last step."""
        x = self.drop(self.embed(ids), self.masks)  # (B, T, E)
        if state is None:
            state = self.initial_state(ids.shape[0], ids.device)
        rnn_state = state if self.config.cell == "lstm" else state[0]
        config = self.config
        out, rnn_state = run_stack(self.rnn, x, rnn_state, config.dropout, config.weight_drop, self.masks)  # (B, T, H)
        new_state = rnn_state if isinstance(rnn_state, tuple) else (rnn_state,)
        return self.drop(out, self.masks), new_state

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) -> next-token scores (B, T, V) and the state. Their softmax is the model's
        distribution: logits for the full softmax, log-probabilities for the adaptive one."""
        out, state = self.encode(ids, state)
        return self.head.scores(out), state

    def nll(self, ids: Tensor, targets: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Negative log-likelihood of each target in nats (B, T), and the state. Training and
        evaluation go through here rather than through the scores, so the adaptive softmax
        scores only the clusters the targets lie in."""
        out, state = self.encode(ids, state)
        nats = self.head.nll(out.flatten(0, 1), targets.flatten())  # (B T,)
        return nats.view(targets.shape), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    """Cut the graph between windows, or backprop would reach back to the start of the corpus."""
    return tuple(s.detach() for s in state)

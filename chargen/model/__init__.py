"""The network: embedding -> stacked recurrent layers -> output layer, trained as one torch module.

- `network`: CharLM, its state and how it is carried between windows;
- `heads`: the output layers (full softmax, adaptive softmax);
- `dropout`: the cheap CPU dropout, and the layer-by-layer run that carries it and weight drop.

The LSTM step exists five times. A change to the model's step must move all of them, and each has
tests that keep it equal to the model:

1. `nn.LSTM` inside CharLM (network.py): the step training and evaluation run, and the reference.
2. `dropout.layer_by_layer`: the same layers one call each, with dropout and weight drop between
   them (tests/test_dropout.py: test_layer_by_layer_is_the_fused_stack,
   test_weight_drop_runs_each_layer_on_its_recurrent_weights_with_one_mask_dropped).
3. `chargen/generation/inference.py`: the sampling steps, weights folded and rearranged per
   precision (tests/test_sample.py: test_the_fp32_step_gives_the_models_logits_and_tokens,
   test_reduced_precision_keeps_the_models_quality; tests/test_kernels.py:
   test_fp32_steps_give_the_models_tokens, test_reduced_precision_steps_give_the_models_distribution,
   test_the_first_layers_input_gates_are_embedding_times_weights_plus_bias).
4. `chargen/generation/fused.py` with `chargen/generation/_fused*.c`: the native int8 step, one C
   call per token, a path per instruction set (AMX, AVX512-VNNI, AVX-VNNI, AVX2, plain C)
   (tests/test_fused.py: test_the_native_step_computes_the_int8_steps_numbers, which holds it to
   step 3's int8 step, and test_each_path_gives_the_portable_paths_numbers_to_the_bit).
5. `chargen/analysis/cells.py`: the step written out to trace gates and cells (tests/test_cells.py:
   test_the_top_layer_of_a_gru_or_rnn_trace_is_the_models_own_output,
   test_an_lstm_trace_shows_tanh_of_the_cell_state_the_model_carries).
"""

from chargen.model.network import CharLM, State, detach_state

__all__ = ["CharLM", "State", "detach_state"]

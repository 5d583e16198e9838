"""The export-friendly gated delta rule equals transformers' chunked reference: one chunk, a padded
chunk, several chunks, grouped key heads, from a non-zero recurrent state."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")
pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")

from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule  # noqa: E402

from qwen_vla_ros.model.delta_rule import scan_gated_delta_rule, unit_lower_inverse  # noqa: E402


@pytest.mark.parametrize("size", [1, 2, 5, 64])
def test_unit_lower_inverse_is_the_inverse(size: int) -> None:
    generator = torch.Generator().manual_seed(size)
    # entries of the delta rule's system are k_i . k_j beta_j decay, at most 1 in magnitude
    lower = (torch.rand(3, size, size, generator=generator, dtype=torch.float64) * 2 - 1).tril(-1) * 0.5
    eye = torch.eye(size, dtype=torch.float64).expand_as(lower)
    expected = torch.linalg.solve_triangular(eye + lower, eye, upper=False, unitriangular=True)
    torch.testing.assert_close(unit_lower_inverse(lower), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("length", [1, 7, 64, 150, 300])
def test_scan_delta_rule_equals_transformers(length: int) -> None:
    generator = torch.Generator().manual_seed(length)
    batch, key_heads, value_heads, key_dim, value_dim = 1, 2, 4, 16, 8

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    query, key = randn(batch, length, key_heads, key_dim), randn(batch, length, key_heads, key_dim)
    value = randn(batch, length, value_heads, value_dim)
    decay = -torch.rand(batch, length, value_heads, generator=generator) * 0.5
    beta = torch.rand(batch, length, value_heads, generator=generator)
    state = randn(batch, value_heads, key_dim, value_dim)
    expected, expected_state = torch_chunk_gated_delta_rule(
        query, key, value, g=decay, beta=beta, initial_state=state, output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )
    output, new_state = scan_gated_delta_rule(query, key, value, decay, beta, state)
    assert output.shape == expected.shape and new_state.shape == expected_state.shape
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(new_state, expected_state, rtol=0, atol=1e-5)

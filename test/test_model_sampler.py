"""Known answers for the Euler flow-matching sampler (qwen_vla_ros.model.sampler.euler_sample).

The expected values come from the mathematics, not from running the sampler: under the
codebase's convention flow time tau runs from 0 (noise x_0) to 1 (actions x_1) on the grid
tau_k = k/K, k = 0..K-1, and each step adds v(x, tau_k) / K. So

- a constant field v lands on x_0 + v for any K;
- the exact flow-matching field towards one target, v(x, tau) = (x_1 - x) / (1 - tau) (the
  velocity of the straight path x_tau = (1 - tau) x_0 + tau x_1), passes through that path
  at every grid point and lands exactly on x_1: its last step is taken at tau = 1 - 1/K,
  where it covers the whole remaining gap;
- a field v = 2 tau, integrated by the left-point rule, adds sum_k 2 (k/K) / K = (K - 1)/K.

A time grid shifted by one step (tau_k = (k+1)/K) breaks the second (it evaluates the field at
tau = 1, where the remaining gap has no finite velocity) and the third ((K + 1)/K).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")

from qwen_vla_ros.model.sampler import Guidance, euler_sample  # noqa: E402

SHAPE = (2, 5, 4)  # batch, horizon, action width
ROUNDING = 1e-6
"""The sampler hands tau to the field as float32 (as the network takes it), so 1 - tau is off by
up to 6e-8 relative; over 37 steps on values of a few units that stays far below 1e-6, while a
wrong time grid misses by a whole step (or divides by zero)."""


def _noise_and_mask(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    mask = torch.ones(1, 1, SHAPE[2], dtype=torch.float64)
    mask[..., -1] = 0.0  # a padded channel
    return noise, mask


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 37])
def test_a_constant_field_lands_at_start_plus_velocity_for_any_step_count(steps: int) -> None:
    noise, mask = _noise_and_mask()
    constant = torch.linspace(-1.5, 2.0, SHAPE[1] * SHAPE[2], dtype=torch.float64).view(1, *SHAPE[1:])
    result = euler_sample(lambda x, t: constant.expand_as(x), noise, mask, steps)
    torch.testing.assert_close(result, (noise + constant) * mask, rtol=0, atol=1e-12)
    assert torch.all(result[..., -1] == 0), "padded channels stay exactly zero"


@pytest.mark.parametrize("steps", [1, 2, 4, 10, 37])
def test_the_exact_single_target_field_lands_on_its_target(steps: int) -> None:
    noise, mask = _noise_and_mask(1)
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * mask
    seen: list[tuple[float, torch.Tensor]] = []

    def towards_target(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tau = t.view(-1, 1, 1).to(x.dtype)
        seen.append((float(t[0]), x.detach().clone()))
        return (target - x) / (1.0 - tau)

    result = euler_sample(towards_target, noise, mask, steps)
    torch.testing.assert_close(result, target, rtol=0, atol=ROUNDING)
    assert [tau for tau, _ in seen] == pytest.approx([k / steps for k in range(steps)], abs=1e-7), \
        "the field is evaluated at tau = k/K, from 0 (noise) up to 1 - 1/K"
    for tau, x in seen:  # every step lies on the straight path from the noise to the target
        torch.testing.assert_close(x, ((1 - tau) * noise + tau * target) * mask, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_a_time_ramp_integrates_by_the_left_point_rule(steps: int) -> None:
    noise, mask = _noise_and_mask(3)
    result = euler_sample(lambda x, t: 2.0 * t.view(-1, 1, 1).to(x.dtype).expand_as(x), noise, mask, steps)
    torch.testing.assert_close(result, (noise + (steps - 1) / steps) * mask, rtol=0, atol=1e-7)


@pytest.mark.parametrize("steps", [2, 5])
def test_guidance_cannot_move_a_sample_whose_prediction_is_already_certain(steps: int) -> None:
    """With the exact single-target field the predicted final chunk x + (1 - tau) v is the
    target whatever x is, so its pull back to x is zero: guided sampling towards any other
    chunk still lands on the field's target."""
    noise, mask = _noise_and_mask(4)
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * mask
    elsewhere = Guidance(target=torch.zeros(1, *SHAPE[1:], dtype=torch.float64),
                         weights=torch.ones(1, SHAPE[1], 1, dtype=torch.float64), max_weight=5.0)
    result = euler_sample(lambda x, t: (target - x) / (1.0 - t.view(-1, 1, 1).to(x.dtype)), noise, mask, steps,
                          guidance=elsewhere)
    torch.testing.assert_close(result, target, rtol=0, atol=ROUNDING)

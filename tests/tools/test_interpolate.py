"""The weight-interpolation baseline's arithmetic (the command end to end runs on the pipeline smoke run, in
``test_pipeline.py``)."""

import pytest
import torch

from lit_instruct.tools.interpolate import interpolate_state_dicts


def by_loop(start: dict, end: dict, ratio: float) -> dict:
    out = {}
    for name in end:
        if end[name].is_floating_point():
            a, b = start[name].float().flatten().tolist(), end[name].float().flatten().tolist()
            out[name] = torch.tensor([(1 - ratio) * x + ratio * y for x, y in zip(a, b)]).view_as(end[name]).to(end[name].dtype)
        else:
            out[name] = end[name]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interpolation_equals_a_loop_and_its_ends_are_the_two_policies(dtype):
    start = {"w": torch.randn(3, 4).to(dtype), "b": torch.randn(4).to(dtype), "steps": torch.tensor([3])}
    end = {"w": torch.randn(3, 4).to(dtype), "b": torch.randn(4).to(dtype), "steps": torch.tensor([7])}
    for ratio in (0.0, 0.3, 0.5, 1.0):
        mixed = interpolate_state_dicts(start, end, ratio)
        for name, value in by_loop(start, end, ratio).items():
            assert mixed[name].dtype == end[name].dtype
            torch.testing.assert_close(mixed[name], value, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-6)
    assert all(torch.equal(interpolate_state_dicts(start, end, 0.0)[k], start[k]) for k in ("w", "b"))
    assert all(torch.equal(interpolate_state_dicts(start, end, 1.0)[k], end[k]) for k in end)
    # symmetric: a of the way from start to end is 1 - a of the way back
    torch.testing.assert_close(interpolate_state_dicts(start, end, 0.25)["w"].float(),
                               interpolate_state_dicts(end, start, 0.75)["w"].float(), rtol=1e-2, atol=1e-2)


def test_interpolation_refuses_different_architectures():
    with pytest.raises(ValueError, match="differ in names"):
        interpolate_state_dicts({"a": torch.zeros(2)}, {"b": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match=r"a: shape \(2,\) vs \(3,\)"):
        interpolate_state_dicts({"a": torch.zeros(2)}, {"a": torch.zeros(3)}, 0.5)

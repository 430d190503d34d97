"""Where the pair's models sit: the fit rule, taking turns on the device, and what the report says."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pytest_qxai.models.residency import HEADROOM, Residency, estimated_quantized_bytes, models_fit

GIB = 2**30


class FakeModel:
    """Stands for a model: remembers every device it was sent to."""

    def __init__(self) -> None:
        self.moves: list[str] = []

    def to(self, device: str) -> "FakeModel":
        self.moves.append(device)
        return self


def test_an_8b_pair_fits_an_80_gib_gpu_but_not_a_24_gib_one() -> None:
    reference = 16 * GIB  # bf16 8B
    quantized = estimated_quantized_bytes(reference, bits=4, dtype_bits=16)
    assert models_fit(reference, quantized, 80 * GIB)
    assert not models_fit(reference, quantized, 24 * GIB)


@given(st.integers(1, 10**12), st.integers(2, 16), st.sampled_from([16, 32]))
def test_the_quantized_estimate_is_at_most_the_reference_and_grows_with_bits(ref: int, bits: int, dtype_bits: int) -> None:
    estimate = estimated_quantized_bytes(ref, bits, dtype_bits)
    assert 0 <= estimate <= ref
    assert estimate <= estimated_quantized_bytes(ref, min(bits + 1, 16), dtype_bits)


@given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(1, 10**12))
def test_fitting_keeps_the_headroom(ref: int, quant: int, gpu: int) -> None:
    assert models_fit(ref, quant, gpu) == (ref + quant <= (1 - HEADROOM) * gpu)


def taking_turns(device: str, quantized_movable: bool) -> tuple[Residency, Any, Any]:
    """A residency that takes turns on ``device`` between a movable reference and a quantized model."""
    reference, quantized = FakeModel(), FakeModel()
    residency = Residency(device, turns=True)
    residency.add(reference, movable=True)  # type: ignore[arg-type]
    residency.add(quantized, movable=quantized_movable)  # type: ignore[arg-type]
    return residency, reference, quantized


def test_taking_turns_moves_the_other_model_off_first_and_only_on_a_switch() -> None:
    residency, reference, quantized = taking_turns("cuda:0", quantized_movable=True)
    residency.ensure(reference)
    residency.ensure(reference)
    assert (quantized.moves, reference.moves, residency.swaps) == (["cpu"], ["cuda:0"], 1)
    residency.ensure(quantized)
    assert (reference.moves, quantized.moves, residency.swaps) == (["cuda:0", "cpu"], ["cpu", "cuda:0"], 2)
    assert residency.describe() == "one model on the GPU at a time (the other waits on the CPU)"


def test_a_model_that_cannot_move_stays_and_the_report_says_so() -> None:
    residency, reference, quantized = taking_turns("cuda", quantized_movable=False)
    residency.ensure(reference)
    residency.ensure(quantized)
    assert quantized.moves == [] and reference.moves == ["cuda", "cpu"]
    assert "cannot move" in residency.describe()


def test_without_turns_nothing_moves() -> None:
    model: Any = FakeModel()
    residency = Residency("cpu", turns=False)
    residency.add(model, movable=True)
    residency.ensure(model)
    assert model.moves == [] and residency.swaps == 0
    assert residency.describe() == "both models on cpu"

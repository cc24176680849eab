"""A conversion says when its measured error predicts a broken model, whatever the method's name."""

from __future__ import annotations

import pytest

from lowbit.convert.converter import convert, perplexity_warning, weight_error_warning


def test_weight_error_thresholds():
    assert weight_error_warning([0.009] * 30) is None  # q8
    assert weight_error_warning([0.09] * 30) is None  # q4 RTN
    assert "large quantisation error" in weight_error_warning([0.18] * 30)  # q3 RTN
    for err in (0.38, 0.556, 0.61):  # q2 RTN, ternary, onebit
        w = weight_error_warning([err] * 30)
        assert "destroys its quality" in w and f"{err:.2f}" in w
    # a mix whose few broken layers break the model (onebit MLPs in a q8 model)
    mix = [0.61] * 30 + [0.009] * 180
    assert "30 of 210 layers" in weight_error_warning(mix)
    assert weight_error_warning([0.61] + [0.009] * 100) is None  # one layer in a hundred
    assert weight_error_warning([]) is None


def test_perplexity_ratio_thresholds():
    assert perplexity_warning(24.6, 24.5) is None
    assert perplexity_warning(31.1, 24.5) is None  # q4 RTN, 1.27x
    assert "clearly worse" in perplexity_warning(39.5, 24.5)  # q3 GPTQ, 1.61x
    assert "broken" in perplexity_warning(156.0, 24.5)  # q2 GPTQ, 6.4x
    assert "broken" in perplexity_warning(float("inf"), 24.5)
    assert "broken" in perplexity_warning(float("nan"), 24.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import save_tiny

    return save_tiny("llama", tmp_path_factory.mktemp("warn") / "hf", seed=4)


@pytest.mark.parametrize("method,expected", [("q8", None), ("q4", None), ("q3", "large quantisation error"),
                                             ("q2", "destroys its quality"), ("onebit", "destroys its quality"),
                                             ("ternary", "destroys its quality")])
def test_conversions_warn_by_measured_error(tiny, tmp_path, method, expected):
    from lowbit.convert.architectures import is_linear_weight

    result = convert(tiny, tmp_path / f"{method}.lowbit", method=method)
    errors = [t.rel_error for t in result.tensors if is_linear_weight(t.name)]
    mean = sum(errors) / len(errors)
    if expected is None:
        assert result.warnings == [] and mean < 0.15
    else:
        assert any(expected in w for w in result.warnings), (mean, result.warnings)
        assert mean >= 0.15

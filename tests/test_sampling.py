"""Sampling and stop strings. Oracles: argmax, transformers' logits processors (the same filter
chain, in torch), the softmax itself (empirical frequencies), and simple string searches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lowbit.runtime.sampling import (
    InvalidSamplingParams,
    SamplingParams,
    apply_repetition_penalty,
    make_sampler,
)
from lowbit.runtime.stopping import StopChecker


def random_logits(vocab: int, seed: int, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(vocab) * scale).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


# -- greedy, seeds -------------------------------------------------------------------------
def test_greedy_is_argmax() -> None:
    sampler = make_sampler(SamplingParams())
    for seed in range(20):
        logits = random_logits(1000, seed)
        assert sampler(logits, [1, 2, 3]) == int(np.argmax(logits))
    ties = np.array([0.0, 5.0, 5.0, 1.0], dtype=np.float32)
    assert make_sampler()(ties, []) == 1  # the first of equal maxima, as argmax


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.0, 100.0])
def test_top_k_one_is_greedy(temperature: float) -> None:
    sampler = make_sampler(SamplingParams(temperature=temperature, top_k=1, top_p=0.5, seed=0))
    for seed in range(20):
        logits = random_logits(500, seed)
        assert sampler(logits, []) == int(np.argmax(logits))


def draws(params: SamplingParams, logits: np.ndarray, n: int) -> list[int]:
    sampler = make_sampler(params)
    return [sampler(logits, []) for _ in range(n)]


def test_seed_repeats_and_samplers_are_independent() -> None:
    logits = random_logits(300, 0, scale=1.0)
    p = SamplingParams(temperature=1.0, seed=1234)
    assert draws(p, logits, 200) == draws(p, logits, 200)
    assert draws(p, logits, 200) != draws(SamplingParams(temperature=1.0, seed=1235), logits, 200)
    # Interleaving two samplers with the same seed changes neither (no shared generator).
    a, b = make_sampler(p), make_sampler(p)
    ab = [(a(logits, []), b(logits, [])) for _ in range(100)]
    assert [x for x, _ in ab] == [y for _, y in ab] == draws(p, logits, 100)
    # Unseeded samplers differ from each other (fresh entropy).
    q = SamplingParams(temperature=1.0)
    assert draws(q, logits, 50) != draws(q, logits, 50)


# -- filters against transformers ------------------------------------------------------------
def transformers_distribution(
    logits: np.ndarray, previous: list[int], p: SamplingParams
) -> tuple[set[int], np.ndarray]:
    """The same chain with transformers' processors: the surviving ids and the full probability vector."""
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    scores = torch.tensor(logits, dtype=torch.float64)[None]
    ids = torch.tensor([previous], dtype=torch.long)
    chain = []
    if p.repetition_penalty != 1.0:
        chain.append(lp.RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    chain.append(lp.TemperatureLogitsWarper(p.temperature))
    if p.top_k:
        chain.append(lp.TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        chain.append(lp.TopPLogitsWarper(p.top_p))
    if p.min_p > 0.0:
        chain.append(lp.MinPLogitsWarper(p.min_p))
    for proc in chain:
        scores = proc(ids, scores)
    probs = torch.softmax(scores, dim=-1)[0].numpy()
    return set(np.flatnonzero(probs > 0).tolist()), probs


CHAINS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=40),
    dict(temperature=0.8, top_p=0.9),
    dict(temperature=1.3, min_p=0.05),
    dict(temperature=0.7, top_k=50, top_p=0.95, min_p=0.02),
    dict(temperature=1.0, top_p=0.5, repetition_penalty=1.3),
    dict(temperature=2.0, top_p=0.99),  # a nucleus wider than the first probe
    dict(temperature=0.5, top_k=5000, top_p=0.999, min_p=0.001, repetition_penalty=0.8),
]


@pytest.mark.parametrize("chain", CHAINS, ids=[str(c) for c in CHAINS])
@pytest.mark.parametrize("vocab", [50, 4096])
def test_filters_match_transformers(chain: dict, vocab: int) -> None:
    params = SamplingParams(**chain, repetition_context=10_000, seed=0)
    sampler = make_sampler(params)
    for seed in range(5):
        logits = random_logits(vocab, seed, scale=2.0 + seed)
        previous = np.random.default_rng(seed).integers(0, vocab, 30).tolist()
        ids, probs = sampler.distribution(logits, previous)
        allowed, expected = transformers_distribution(logits, previous, params)
        assert set(ids.tolist()) == allowed
        np.testing.assert_allclose(probs, expected[ids], rtol=1e-5, atol=1e-9)
        assert abs(probs.sum() - 1.0) < 1e-9


@pytest.mark.parametrize(
    "params, allowed",
    [
        (SamplingParams(temperature=1.0, top_p=0.6), {0, 1}),  # 0.5 < 0.6 <= 0.8
        (SamplingParams(temperature=1.0, top_p=0.85), {0, 1, 2}),
        (SamplingParams(temperature=1.0, min_p=0.5), {0, 1}),  # p >= 0.25
        (SamplingParams(temperature=1.0, min_p=0.15), {0, 1, 2}),  # p >= 0.075
        (SamplingParams(temperature=1.0, top_k=2), {0, 1}),
    ],
)
def test_draws_stay_inside_the_allowed_set(params: SamplingParams, allowed: set[int]) -> None:
    probs = np.array([0.5, 0.3, 0.1, 0.05, 0.03, 0.02])
    logits = np.log(probs).astype(np.float32)
    seen = set(draws(dataclasses.replace(params, seed=7), logits, 5000))
    assert seen == allowed


def test_top_p_on_a_large_vocabulary_never_leaves_the_nucleus() -> None:
    vocab = 50_000
    logits = random_logits(vocab, 3, scale=4.0)
    params = SamplingParams(temperature=1.0, top_p=0.7, seed=5)
    allowed, _ = transformers_distribution(logits, [], params)
    assert set(draws(params, logits, 3000)) <= allowed


def test_repetition_penalty() -> None:
    # Positive logits are divided, negative multiplied: both can hand the argmax to another token.
    logits = np.array([2.0, 1.9, -5.0, 0.0], dtype=np.float32)
    greedy = SamplingParams(repetition_penalty=1.2)
    assert make_sampler(SamplingParams())(logits, [0]) == 0
    assert make_sampler(greedy)(logits, [0]) == 1
    negative = np.array([-1.0, -1.1, -3.0], dtype=np.float32)
    assert make_sampler(greedy)(negative, [0, 0, 0]) == 1
    # Only the last repetition_context ids count.
    window = SamplingParams(repetition_penalty=1.2, repetition_context=4)
    assert make_sampler(window)(logits, [0, 3, 3, 3, 3]) == 0
    assert make_sampler(window)(logits, [3, 3, 3, 0]) == 1
    # Each id once however often it occurs; ids outside the vocabulary are ignored; input untouched.
    out = apply_repetition_penalty(logits, [0, 0, 0, 2, 99, -1], 2.0, 64)
    np.testing.assert_allclose(out, [1.0, 1.9, -10.0, 0.0])
    np.testing.assert_allclose(logits, [2.0, 1.9, -5.0, 0.0])


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_frequencies_match_softmax(temperature: float) -> None:
    """Chi-square over 20k draws (fixed seed) against softmax(logits / T)."""
    logits = np.array([1.0, 0.5, 0.0, -0.5, -1.0, 2.0, 0.2, -2.0, 1.5, 0.8], dtype=np.float32)
    n = 20_000
    counts = np.bincount(
        draws(SamplingParams(temperature=temperature, seed=42), logits, n), minlength=10
    )
    expected = softmax(logits / temperature) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9, (chi2, counts, expected)  # df=9, p=0.001


def test_nan_logits_raise() -> None:
    bad = np.array([0.0, np.nan, 1.0], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        make_sampler()(bad, [])
    with pytest.raises(ValueError, match="NaN"):
        make_sampler(SamplingParams(temperature=1.0))(bad, [])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-0.1),
        dict(top_k=-1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(min_p=-0.1),
        dict(min_p=1.5),
        dict(repetition_penalty=0.0),
        dict(repetition_context=-1),
        dict(max_tokens=-1),
    ],
)
def test_invalid_params(kwargs: dict) -> None:
    with pytest.raises(InvalidSamplingParams):
        SamplingParams(**kwargs)


def test_params_defaults_and_stop_normalisation() -> None:
    p = SamplingParams()
    assert p.greedy and p.stop == [] and p.max_tokens is None and p.seed is None
    assert SamplingParams(stop="\n\n").stop == ["\n\n"]
    assert SamplingParams(stop=["", "x"]).stop == ["x"]
    assert SamplingParams(temperature=0.8, top_k=1).greedy


# -- stop strings ------------------------------------------------------------------------
def stream_with_stops(pieces: list[str], stops: list[str]) -> tuple[str, list[str], bool]:
    """What generate.py does: print settled text minus the hold-back; cut at a stop string."""
    checker = StopChecker(stops, eos_ids=[])
    full, printed, out = "", "", []
    for piece in pieces:
        full += piece
        cut, hold = checker.check(full)
        if cut is not None:
            out.append(full[:cut][len(printed) :])
            return printed + out[-1], out, True
        safe = len(full) - hold
        if safe > len(printed):
            out.append(full[len(printed) : safe])
            printed = full[:safe]
    out.append(full[len(printed) :])
    return printed + out[-1], out, False


def test_stop_string_is_cut_and_never_partly_printed() -> None:
    text, out, stopped = stream_with_stops(list("Hello there\nUser: more"), ["\nUser:"])
    assert stopped and text == "Hello there"
    assert not any("\n" in o or "U" in o for o in out)


def test_holdback_lengths() -> None:
    checker = StopChecker(["\nUser:", "###"], eos_ids=[2, 7])
    assert checker.check("Hello") == (None, 0)
    assert checker.check("Hello\n") == (None, 1)
    assert checker.check("Hello\nUs") == (None, 3)
    assert checker.check("Hello\nUx") == (None, 0)
    assert checker.check("Hello\nUx##") == (None, 2)
    assert checker.check("Hello\nUx###") == (8, 0)
    assert checker.is_eos(7) and not checker.is_eos(3)
    assert StopChecker(["abab"]).holdback("xaba") == 3  # overlapping prefixes: the longest
    assert StopChecker([]).check("anything") == (None, 0)


def test_earliest_stop_wins_across_chunks() -> None:
    rng = np.random.default_rng(0)
    text = "alpha beta END gamma STOP delta"
    for _ in range(50):
        cuts = sorted(set(rng.integers(1, len(text), 6).tolist()))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        got, _, stopped = stream_with_stops(pieces, ["STOP", "END"])
        assert stopped and got == "alpha beta "
    got, _, stopped = stream_with_stops(["no stop here"], ["STOP"])
    assert not stopped and got == "no stop here"


def test_checker_searches_only_new_text_but_resets_for_a_new_stream() -> None:
    checker = StopChecker(["ab"])
    assert checker.find("xxxa") is None
    assert checker.find("xxxab") == 3  # straddles the previous end
    assert checker.find("ab") == 0  # shorter text: a new stream

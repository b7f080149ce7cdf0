"""SamplingParams validation and the sampler (no model)."""

import math

import pytest
import torch

from chunkattn_core.sampling import SamplingParams, filter_logits, make_generator, sample


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 1.0}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"ignore_eos": 1}, "ignore_eos"),
    ],
)
def test_params_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field, expected",
    [
        ({}, "max_tokens", 64),
        ({"stop": "###"}, "stop", ["###"]),
        ({"stop": ("a", "b")}, "stop", ["a", "b"]),
        ({"temperature": 0}, "greedy", True),
        ({"temperature": 0.7}, "greedy", False),
        ({"top_k": -1}, "top_k", -1),
        ({"temperature": 1}, "temperature", 1.0),
    ],
)
def test_params_accepts(kwargs, field, expected):
    assert getattr(SamplingParams(**kwargs), field) == expected


PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize(
    "top_k, top_p, kept",
    [
        (0, 1.0, [0, 1, 2, 3]),
        (-1, 1.0, [0, 1, 2, 3]),
        (1, 1.0, [0]),
        (2, 1.0, [0, 1]),
        (4, 1.0, [0, 1, 2, 3]),
        (10, 1.0, [0, 1, 2, 3]),
        (0, 0.3, [0]),
        (0, 0.7, [0, 1]),
        (0, 0.9, [0, 1, 2]),
        (0, 0.99, [0, 1, 2, 3]),
        (2, 0.9, [0, 1]),
        (3, 0.7, [0, 1]),
    ],
)
def test_filter_keeps(top_k, top_p, kept):
    order = torch.tensor([2, 0, 3, 1])  # shuffled so the filter cannot rely on position
    logits = PROBS.log()[order]
    filtered = filter_logits(logits, 1.0, top_k, top_p)
    kept_ids = sorted(order[torch.isfinite(filtered)].tolist())
    assert kept_ids == kept


def test_filter_temperature_scales():
    logits = torch.tensor([1.0, 2.0, 4.0])
    torch.testing.assert_close(filter_logits(logits, 0.5, 0, 1.0), logits * 2)


def _batch(*rows):
    return torch.stack([r.log() for r in rows])


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=5.0, top_p=0.01),
    ],
    ids=["greedy", "top_k_1", "tiny_top_p"],
)
def test_argmax_cases(params):
    logits = _batch(torch.tensor([0.1, 0.6, 0.3]), torch.tensor([0.7, 0.2, 0.1]))
    generators = [make_generator(0), make_generator(1)]
    assert sample(logits, [params, params], generators) == [1, 0]


def test_seed_gives_same_tokens_whatever_the_batch():
    probs = torch.softmax(torch.randn(1000, generator=make_generator(7)), -1)
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=3)
    alone = [sample(probs.log()[None], [params], [make_generator(3)])[0] for _ in range(5)]
    generator = make_generator(3)
    alone_run = [sample(probs.log()[None], [params], [generator])[0] for _ in range(5)]
    generator, other = make_generator(3), make_generator(99)
    other_probs = torch.softmax(torch.randn(1000), -1)
    batched_run = [
        sample(torch.stack([other_probs.log(), probs.log()]), [params, params], [other, generator])[1]
        for _ in range(5)
    ]
    assert alone == [alone_run[0]] * 5  # a fresh generator with one seed always draws the same
    assert batched_run == alone_run


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    params = SamplingParams(temperature=1.0)
    generator = make_generator(0)
    draws = [sample(probs.log()[None], [params], [generator])[0] for _ in range(3000)]
    freq = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


def test_sample_checks_shapes():
    with pytest.raises(ValueError, match="logits"):
        sample(torch.zeros(2, 5), [SamplingParams()], [None])

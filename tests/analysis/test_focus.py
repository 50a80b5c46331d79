"""Attention concentration in a form that compares heads with different key counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vilalign.analysis.attention import compare_coattention_focus, entropy_frame, head_focus


def _uniform_over_three(n_keys: int, queries: int = 4) -> torch.Tensor:
    """(1, 1, Q, K): every query spreads its attention evenly over keys 0, 1 and 2."""
    w = torch.zeros(1, 1, queries, n_keys)
    w[..., :3] = 1 / 3
    return w


def test_uniform_attention_over_three_keys_is_equally_focused_among_12_or_197_keys():
    few, many = head_focus(_uniform_over_three(12)), head_focus(_uniform_over_three(197))
    assert float(few["effective_keys"]) == pytest.approx(3.0)
    assert float(many["effective_keys"]) == pytest.approx(3.0)
    # the normalised entropy calls the same behaviour 0.44 and 0.21
    assert float(few["normalized_entropy"]) == pytest.approx(math.log(3) / math.log(12))
    assert float(many["normalized_entropy"]) == pytest.approx(math.log(3) / math.log(197))
    assert float(few["effective_share"]) == pytest.approx(3 / 12)


def test_padding_keys_do_not_count_and_the_frame_carries_every_form():
    w = torch.zeros(1, 1, 2, 6)
    w[..., :3] = 1 / 3
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])  # 4 real keys, 2 padding
    focus = head_focus(w, mask)
    assert float(focus["effective_keys"]) == pytest.approx(3.0)
    assert float(focus["effective_share"]) == pytest.approx(3 / 4)


def _frame(rng, co_keys: int, self_keys: int, heads: int = 6, samples: int = 3):
    """A self-attention layer then a co-attention layer; every head attends uniformly to
    3 keys (text self: ``self_keys`` text tokens; text→image: ``co_keys`` patches)."""

    def heads_(q: int, k: int) -> torch.Tensor:
        w = torch.zeros(samples, heads, q, k)
        for h in range(heads):
            w[:, h, :, rng.choice(k, 3, replace=False)] = 1 / 3
        return w

    T = self_keys
    layers = [
        {"text_self": heads_(T, T), "image_self": heads_(co_keys, co_keys)},
        {"text_to_image": heads_(T, co_keys), "image_to_text": heads_(co_keys, T)},
    ]
    return entropy_frame(layers, [False, True], torch.ones(samples, T, dtype=torch.long))


def test_the_focus_test_sees_no_difference_between_identical_heads_over_different_key_counts():
    df = _frame(np.random.default_rng(0), co_keys=197, self_keys=12)
    fair = compare_coattention_focus(df, query_stream="text", n_resamples=199)
    assert fair.value == "effective_keys" and fair.delta == pytest.approx(0.0, abs=1e-6)
    assert not fair.significant
    unfair = compare_coattention_focus(
        df, query_stream="text", n_resamples=199, value="normalized_entropy"
    )
    assert unfair.delta < -0.2 and unfair.significant  # the artefact this form avoids

"""Review findings on the operator CA (review15a): each test here failed on the code before its fix."""

from __future__ import annotations

import gc
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.identity import Card, derive_ca_key
from agent.operator_ca import BoardCard, CardError, OperatorTrust, raw_public

TOKEN = "operator-ca-cluster-token-0123456789"
NOW = time.time()
OPERATOR = Ed25519PrivateKey.generate()


def _depth(exc: BaseException) -> int:
    n, tb = 0, exc.__traceback__
    while tb is not None:
        n, tb = n + 1, tb.tb_next
    return n


def test_repeated_refusals_of_a_bad_card_keep_nothing_growing() -> None:
    """F1: the refusal is cached as data and raised fresh; a cached exception re-raised grew its traceback (and the
    frames it keeps) by a frame per refused request, without a ceiling."""
    key = raw_public(Ed25519PrivateKey.generate().public_key())
    card = Card.issue(derive_ca_key(TOKEN), "evil", key, board=b"\x01junk")
    trust = OperatorTrust(OPERATOR.public_key())
    depths = []
    for _ in range(200):
        with pytest.raises(CardError) as refused:
            trust.certify("evil", key, card.board)
        depths.append(_depth(refused.value))
    assert trust.verifications == 1  # the verdict is still cached: one check per card bytes
    assert depths[0] == depths[-1]  # each refusal a fresh error, as deep as the first
    cached = trust._verdicts[card.board]
    assert not isinstance(cached, BaseException)  # data, holding no frames
    assert refused.value.status == 403 and "malformed" in str(refused.value)
    gc.collect()
    assert sum(isinstance(o, CardError) for o in gc.get_objects()) <= 2  # none kept but the last one raised

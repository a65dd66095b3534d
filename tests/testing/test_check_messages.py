"""check_pipeline's failure messages say what happened to an item the model expects to fail."""

from __future__ import annotations

import pytest

import trioflow as tf
from trioflow.testing import Expected, InvariantViolation, check_pipeline


def double(x: int) -> int:
    return 2 * x


def test_an_expected_failure_never_pulled_is_named_so() -> None:
    # a model that names an item the source never gave (a copied example's fixed item)
    with pytest.raises(InvariantViolation) as info:
        check_pipeline(
            tf.process(double), [1, 2], model=lambda p: Expected(failed={0: ZeroDivisionError})
        )
    text = str(info.value)
    assert "items expected to fail were never pulled from the source: [0]" in text
    assert "acked as successful" not in text


def test_an_expected_failure_that_succeeded_is_acked_as_successful() -> None:
    with pytest.raises(
        InvariantViolation, match=r"items expected to fail were acked as successful: \[2\]"
    ):
        check_pipeline(
            tf.process(double), [1, 2], model=lambda p: Expected(failed={2: ZeroDivisionError})
        )

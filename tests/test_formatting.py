"""The one metric formatter: value and interval with the same precision."""

from __future__ import annotations

import math

from cifake_lib.core.formatting import format_metric, format_value


def test_value_and_interval_share_precision():
    assert format_metric(0.6418, [0.5680989938563755, 0.7195623419822474]) == "0.6418 [0.5681, 0.7196]"


def test_percent_form():
    assert format_metric(0.575, (0.505, 0.645), percent=True) == "57.50% [50.50%, 64.50%]"


def test_missing_values_and_intervals():
    assert format_value(None) == "–"
    assert format_value(math.nan) == "–"
    assert format_metric(0.5, None) == "0.5000"
    assert format_metric(0.5, [None, 0.6]) == "0.5000"

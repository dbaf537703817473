"""The zone bench's figures (bench/zone.py): nearest-rank percentiles in milliseconds."""

from __future__ import annotations

from bench.zone import _figures, percentile


def test_nearest_rank_percentiles() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    assert percentile(values, 50) == 0.050 and percentile(values, 99) == 0.099
    assert percentile([0.5], 99) == 0.5
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    figures = _figures("x", values)
    assert figures == {"x_count": 100, "x_p50_ms": 50.0, "x_p99_ms": 99.0, "x_max_ms": 100.0}
    assert _figures("y", []) == {"y_count": 0}

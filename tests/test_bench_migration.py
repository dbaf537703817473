"""The migration bench's figures (bench/migration.py): per-migration gaps, medians, ratios."""

from __future__ import annotations

from bench.migration import KINDS, record, summarize


def test_summary_keeps_the_ratio_keys_and_shows_the_gap() -> None:
    walls = {"agent_tls": 1.2, "direct_tls": 1.1, "direct_tcp": 0.8}
    migrations = []
    for i in range(5):
        for kind in KINDS:
            source, dest = ("a", "b") if i % 2 == 0 else ("b", "a")
            wall = walls[kind] + 0.01 * i
            stats = {"time_elapsed": round((wall - 0.25) * 1000), "downtime": 40 + i}
            migrations.append(record(kind, source, dest, wall, stats))
    assert migrations[0] == {
        "kind": "agent_tls",
        "route": "a->b",
        "wall_s": 1.2,
        "job_s": 0.95,
        "gap_s": 0.25,
        "downtime_ms": 40,
    }
    out = summarize(migrations)
    assert out["migrations_each"] == 5
    assert out["direct_tls_median_s"] == 1.12 and out["direct_tcp_median_s"] == 0.82
    assert out["direct_tls_job_median_s"] == 0.87 and out["direct_tcp_gap_median_s"] == 0.25
    # bench/results/latest.json keeps these keys (README targets).
    assert out["native_tls_over_tcp"] == round(1.12 / 0.82, 3)
    assert out["native_tls_over_tcp_job"] == round(0.87 / 0.57, 3)
    assert out["agent_over_direct"] == round(1.22 / 1.12, 3)
    assert out["migrations"] == migrations

"""The secure-aggregation benchmark's arms run the real protocol and agree with plain FedAvg."""

from __future__ import annotations

from experiments.bench.secagg import ARMS, run_cohort, table


def test_every_arm_aggregates_what_plain_fedavg_does_and_the_table_has_ratios() -> None:
    results = run_cohort(10, repeats=1)
    assert [r.arm for r in results] == list(ARMS)
    assert all(r.exact for r in results), [(r.arm, r.exact) for r in results]
    by_arm = {r.arm: r for r in results}
    assert by_arm["secagg-drop10"].senders == 9 and by_arm["secagg"].senders == 10
    # masked vectors are wider than float32 only by the ring's extra bits, plus the stages
    assert by_arm["secagg"].client_kb_up > by_arm["plain"].client_kb_up
    lines = table(results).splitlines()
    assert len(lines) == 2 + len(ARMS) and "| encryption | 10 | 10 |" in lines[3]

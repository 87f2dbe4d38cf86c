"""The adaptive width rule's decisions, from made-up part timings and a
made-up clock (services/width.py)."""

from __future__ import annotations

from edgeloader.services.width import FAST_START, GAIN, SLOW_START, Sample, WidthRule

MiB = 1 << 20
PART = 8 * MiB


def feed(rule: WidthRule, clock: list[float], nbytes: int, rate: float, piece: int = MiB) -> None:
    """``nbytes`` arriving at ``rate`` bytes/s, a piece at a time."""
    for _ in range(nbytes // piece):
        clock[0] += piece / rate
        rule.received(piece, clock[0])


def first_part(rule: WidthRule, clock: list[float], wait: float, rate: float) -> None:
    """The first stream: its first byte after ``wait``, then a part's worth at ``rate``."""
    clock[0] += wait
    feed(rule, clock, PART, rate)
    rule.sample(Sample(wait, PART / rate), clock[0])


def test_a_capped_link_widens_one_step_at_a_time_to_the_ceiling() -> None:
    """Each connection is capped at 20 MB/s and the first byte comes in
    45 ms: every widening adds a connection's rate."""
    rule, clock = WidthRule(4, PART), [0.0]
    first_part(rule, clock, 0.045, 20e6)
    assert (rule.width, rule.settled) == (2, False)
    feed(rule, clock, PART, 40e6)
    assert (rule.width, rule.settled) == (3, False)
    feed(rule, clock, PART, 60e6)
    assert rule.width == 4
    assert rule.settled
    assert "ceiling" in rule.why
    assert not rule.one_stream


def test_a_widening_that_brings_nothing_stops_the_widening() -> None:
    """A fast server on a busy CPU: the second connection is no faster."""
    rule, clock = WidthRule(4, PART), [0.0]
    first_part(rule, clock, 0.0015, 200e6)
    assert rule.width == 2
    feed(rule, clock, PART, 200e6 * (GAIN - 0.05))
    assert rule.width == 2
    assert rule.settled
    assert "no faster" in rule.why
    feed(rule, clock, 10 * PART, 400e6)  # settled: nothing changes any more
    assert rule.width == 2


def test_the_window_must_fill_before_throughput_is_judged() -> None:
    rule, clock = WidthRule(4, PART), [0.0]
    first_part(rule, clock, 0.001, 20e6)
    feed(rule, clock, PART - MiB, 80e6)
    assert (rule.width, rule.settled) == (2, False)
    feed(rule, clock, MiB, 80e6)
    assert rule.width == 3


def test_a_server_slow_to_start_ranges_is_read_as_one_stream() -> None:
    """moto: about 117 ms to the first byte of a part, 12 ms of body."""
    rule, clock = WidthRule(4, PART), [0.0]
    first_part(rule, clock, 0.117, PART / 0.012)
    assert rule.width == 1
    assert rule.one_stream
    assert rule.settled
    assert "slowly" in rule.why


def test_a_later_slow_start_stops_ranged_reads() -> None:
    rule, clock = WidthRule(4, PART), [0.0]
    first_part(rule, clock, 0.001, 20e6)
    assert rule.width == 2
    rule.sample(Sample(wait=0.5, body=0.4), clock[0])
    assert rule.one_stream
    assert rule.settled
    feed(rule, clock, 4 * PART, 80e6)
    assert rule.width == 2


def test_between_the_thresholds_the_width_stays() -> None:
    wait = (FAST_START + SLOW_START) / 2 * 0.4  # against a body of 0.4 s
    rule, clock = WidthRule(4, PART), [0.0]
    first_part(rule, clock, wait, PART / 0.4)
    assert rule.width == 1
    assert rule.settled
    assert not rule.one_stream


def test_a_part_that_starts_less_fast_stops_the_widening_at_the_next_window() -> None:
    rule, clock = WidthRule(4, PART), [0.0]
    first_part(rule, clock, 0.001, 20e6)
    rule.sample(Sample(wait=0.15, body=0.4), clock[0])  # neither fast nor slow
    feed(rule, clock, PART, 40e6)
    assert rule.width == 2
    assert rule.settled
    assert "no longer start fast" in rule.why


def test_a_ceiling_of_one_never_widens() -> None:
    rule, clock = WidthRule(1, PART), [0.0]
    assert rule.settled
    first_part(rule, clock, 0.001, 20e6)
    feed(rule, clock, 8 * PART, 20e6)
    assert rule.width == 1
    assert not rule.one_stream

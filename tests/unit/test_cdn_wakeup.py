"""When a CDN read is woken (:class:`edgeloader.upstream.cdn.Wakeup`): its
decisions against a made-up clock and made-up arrivals, on a real socket
whose ``SO_RCVLOWAT`` is read back."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from edgeloader.upstream.cdn import Wakeup

KiB = 1024


class Arrivals:
    """What aiohttp's body reader counts: every byte it received."""

    total_bytes = 0


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours


def lowat(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def deliver(wakeup: Wakeup, arrivals: Arrivals, n: int) -> None:
    arrivals.total_bytes += n
    wakeup.after(n)


def started(sock: socket.socket, length: int, rate: float) -> tuple[Wakeup, Arrivals, Clock]:
    """A wake-up whose answer delivered a first 64 KiB piece and then one
    more second's worth at ``rate`` bytes per second."""
    arrivals, clock = Arrivals(), Clock()
    wakeup = Wakeup(sock, arrivals, length, clock)
    wakeup.before(256 * KiB)
    deliver(wakeup, arrivals, 64 * KiB)
    clock.now += 1.0
    wakeup.before(256 * KiB)
    deliver(wakeup, arrivals, int(rate))
    return wakeup, arrivals, clock


def test_the_first_piece_is_read_as_it_comes(sock: socket.socket) -> None:
    arrivals = Arrivals()
    wakeup = Wakeup(sock, arrivals, 8 << 20, Clock())
    wakeup.before(256 * KiB)
    assert (wakeup.threshold, lowat(sock)) == (1, 1)


def test_a_fast_answer_wakes_the_reader_once_a_piece(sock: socket.socket) -> None:
    wakeup, _, _ = started(sock, 1 << 30, rate=100e6)
    wakeup.before(256 * KiB)
    assert (wakeup.threshold, lowat(sock)) == (256 * KiB, 256 * KiB)


def test_the_threshold_never_exceeds_what_the_answer_still_owes(sock: socket.socket) -> None:
    wakeup, arrivals, _ = started(sock, 1 << 30, rate=100e6)
    deliver(wakeup, arrivals, (1 << 30) - arrivals.total_bytes - 1000)
    wakeup.before(256 * KiB)
    assert lowat(sock) == 1000


def test_a_slow_answer_is_not_held_back(sock: socket.socket) -> None:
    # 200 KB/s: a 256 KiB threshold would hold each read for over a second.
    wakeup, _, _ = started(sock, 1 << 30, rate=200e3)
    wakeup.before(256 * KiB)
    assert lowat(sock) == int(200e3 * Wakeup.WAKE_AFTER)


def test_bytes_already_buffered_leave_the_threshold(sock: socket.socket) -> None:
    wakeup, arrivals, _ = started(sock, 1 << 30, rate=100e6)
    wakeup.before(256 * KiB)
    arrivals.total_bytes += 300 * KiB  # received, not yet read
    wakeup.after(256 * KiB)
    wakeup.before(1000)  # the read returns at once: no change, no system call
    assert lowat(sock) == 256 * KiB


def test_the_connection_goes_back_with_a_threshold_of_one(sock: socket.socket) -> None:
    wakeup, _, _ = started(sock, 1 << 30, rate=100e6)
    wakeup.before(256 * KiB)
    assert lowat(sock) > 1
    wakeup.release()
    assert (wakeup.threshold, lowat(sock)) == (1, 1)


def test_a_closed_socket_is_left_alone(sock: socket.socket) -> None:
    wakeup, _, _ = started(sock, 1 << 30, rate=100e6)
    sock.close()
    wakeup.before(256 * KiB)
    wakeup.release()
    assert wakeup.threshold == 1

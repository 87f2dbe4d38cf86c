"""The one progress renderer on a terminal: a bar with bytes, rate and ETA;
notes above it; a total learnt late; silent when disabled."""

from __future__ import annotations

import io
import re

from edgeloader.cli.commands.follow import StatusView
from edgeloader.cli.output import Console, Progress

MiB = 1 << 20


class Terminal(io.StringIO):
    """A terminal that reports no size (as some pseudo-terminals do)."""

    def isatty(self) -> bool:
        return True


def test_a_bar_with_bytes_rate_and_eta() -> None:
    screen = Terminal()
    progress = Progress("load", 6 * MiB, stream=screen, min_bytes=0)
    for _ in range(6):
        progress.advance(MiB)
    progress.close()
    text = screen.getvalue()
    assert text.startswith("\rload:   0%|")
    final = text.rstrip("\n").rsplit("\r", 1)[-1]
    assert re.fullmatch(
        r"load: 100%\|.+\| 6\.00MiB/6\.00MiB \[\d\d:\d\d<\d\d:\d\d, +[\d.]+\w?iB/s\]", final
    ), final
    assert len(final) <= 80  # a terminal without a size is taken as 80 columns


def test_notes_go_above_the_bar_and_a_late_total_is_taken() -> None:
    screen = Terminal()
    progress = Progress("unlock", None, stream=screen, min_bytes=0)
    progress.note("unlock: decrypting")
    progress.update_to(3 * MiB, 4 * MiB)
    progress.update_to(4 * MiB)
    progress.close()
    text = screen.getvalue()
    assert "unlock: decrypting\n" in text
    assert "4.00MiB/4.00MiB" in text
    assert progress.done == 4 * MiB


def test_json_mode_and_small_work_show_nothing() -> None:
    screen = Terminal()
    quiet = Console(json_mode=True, err=screen).progress("load", 64 * MiB)
    quiet.advance(64 * MiB)
    quiet.close()
    small = Console(err=screen).progress("load", 1000)
    small.advance(1000)
    small.close()
    assert screen.getvalue() == ""


def test_plain_lines_with_a_late_total() -> None:
    out = io.StringIO()
    progress = Progress("unlock", None, stream=out, min_bytes=0)
    progress.update_to(MiB)  # no total yet: nothing to say
    progress.update_to(2 * MiB, 2 * MiB)
    progress.close()
    assert out.getvalue() == "unlock 2 / 2 MiB (100%)\n"


def _final_frame(screen: Terminal) -> str:
    return screen.getvalue().rstrip("\n").rsplit("\r", 1)[-1]


def test_a_job_seen_late_has_no_rate_from_bytes_it_did_not_see_move() -> None:
    # A pre-staging job first seen when its bytes are all in (it ran before the
    # command looked, or resumed after a restart): those bytes took no time to
    # "arrive" here, so the rate must not count them (it once read 39 GiB/s).
    screen = Terminal()
    view = StatusView(Console(err=screen), "prefetch", frozenset({"done", "failed"}))
    view({"state": "verifying", "bytesDone": 8 * MiB, "bytesTotal": 8 * MiB})
    view.close()
    final = _final_frame(screen)
    assert "8.00MiB/8.00MiB" in final, final
    assert final.endswith("?iB/s]"), final  # no bytes seen moving: no rate


def test_a_job_seen_midway_counts_from_there() -> None:
    screen = Terminal()
    view = StatusView(Console(err=screen), "prefetch", frozenset({"done", "failed"}))
    view({"state": "running", "bytesDone": 6 * MiB, "bytesTotal": 8 * MiB})
    assert view.progress is not None
    assert view.progress.done == 6 * MiB
    view({"state": "running", "bytesDone": 8 * MiB, "bytesTotal": 8 * MiB})
    view.close()
    assert "8.00MiB/8.00MiB" in _final_frame(screen)


def test_a_job_over_when_first_seen_gets_no_bar() -> None:
    screen = Terminal()
    view = StatusView(Console(err=screen), "prefetch", frozenset({"done", "failed"}))
    view({"state": "done", "bytesDone": 8 * MiB, "bytesTotal": 8 * MiB})
    view.close()
    assert view.progress is None
    assert screen.getvalue() == ""

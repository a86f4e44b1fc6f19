"""Progress on stderr: rich bars on a terminal, plain periodic lines anywhere else (a log file, CI, nohup)."""

from __future__ import annotations

import io

from rich.console import Console

from imgclf.progress import LINE_EVERY_S, LineProgress, bar, bar_factory

REDRAWS = ("\r", "\x1b", "━", "\u2578", "\u257a")  # carriage return, escape sequences, bar glyphs


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _log_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, soft_wrap=True), out


def test_off_a_terminal_a_bar_is_plain_lines_every_tenth_of_the_work():
    console, out = _log_console()
    progress = bar(console, "epoch   1/25", 1000)
    assert isinstance(progress, LineProgress)
    for step in range(1, 1001):
        progress.update(progress.tasks[0].id, completed=step, info=f"loss {1 / step:.4f}")
    progress.stop()
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[1].split(")")[0] for line in lines] == [f"{p}%" for p in range(10, 101, 10)]
    assert lines[0] == "epoch   1/25: 100/1000 (10%), loss 0.0100, 0:00 elapsed"
    assert not any(mark in out.getvalue() for mark in REDRAWS)


def test_a_slow_bar_writes_a_line_every_30_seconds_and_the_last_state_on_stop():
    console, out = _log_console()
    clock = FakeClock()
    progress = LineProgress(console, "decoding training", 1000, clock=clock)
    for _ in range(3):  # 3 of 1000 images, one every LINE_EVERY_S seconds: no tenth reached
        clock.now += LINE_EVERY_S
        progress.update(0, advance=1)
    clock.now += 5
    progress.update(0, advance=1)  # 5 s after the last line: quiet
    progress.stop()
    progress.stop()  # once only
    assert out.getvalue().splitlines() == [
        "decoding training: 1/1000 (0%), 0:30 elapsed",
        "decoding training: 2/1000 (0%), 1:00 elapsed",
        "decoding training: 3/1000 (0%), 1:30 elapsed",
        "decoding training: 4/1000 (0%), 1:35 elapsed",
    ]


def test_a_bar_factory_off_a_terminal_ends_with_one_full_line():
    console, out = _log_console()
    advance = bar_factory(console)("classifying", 7)
    for _ in range(7):
        advance(1)
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("classifying: 7/7 (100%)") and len(lines) == 7  # 7 units: each is a tenth


def test_on_a_terminal_the_bar_is_rich():
    from rich.progress import Progress

    progress = bar(Console(file=io.StringIO(), force_terminal=True), "x", 10)
    progress.stop()
    assert isinstance(progress, Progress)


def test_training_with_stderr_in_a_log_file_writes_plain_lines(tiny_dataset, tmp_path):
    from helpers import run_cli

    code, out, err = run_cli(
        "train", "--dataset", tiny_dataset, "--model", tmp_path / "m.imgclf", "--epochs", "2", "--size", "16",
        "--arch", "small_cnn", "--arch-arg", "widths=[4,8]", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, err
    assert not any(mark in err for mark in REDRAWS)
    lines = err.splitlines()
    assert "decoding training: 24/24 (100%), 0:00 elapsed" in lines
    epoch_one = [line for line in lines if line.startswith("epoch   1/2: ")]
    assert len(epoch_one) == 6 and epoch_one[-1].startswith("epoch   1/2: 6/6 (100%), loss ")

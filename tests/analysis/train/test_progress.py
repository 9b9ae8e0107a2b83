"""The training bar's ETA counts the steps' pace, not the first piece's compilation (issue 25, defect 6)."""

from __future__ import annotations

import io

from tqdm import tqdm

from analysis.train.loop import restart_rate


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bar(clock: _Clock) -> tqdm:
    bar = tqdm(total=1000, file=io.StringIO(), mininterval=0, miniters=1)
    bar._time = clock
    bar.start_t = bar.last_print_t = clock()
    return bar


def _eta_after_compile(restart: bool) -> float:
    """Seconds left per the bar after a 60 s compiling first piece of 10 steps, then 4 pieces at 100 steps/s."""
    clock = _Clock()
    bar = _bar(clock)
    clock.now += 60.0  # the first piece: compilation, then 10 steps
    bar.update(10)
    if restart:
        restart_rate(bar)
    for _ in range(4):
        clock.now += 0.1
        bar.update(10)
    fmt = bar.format_dict
    rate = fmt["rate"] or (fmt["n"] - fmt["initial"]) / fmt["elapsed"]
    bar.close()
    return (fmt["total"] - fmt["n"]) / rate


def test_the_eta_after_the_compiling_piece_is_the_steps_pace():
    expected = (1000 - 50) / 100.0  # 9.5 s at 100 steps/s
    assert abs(_eta_after_compile(restart=True) - expected) < 0.05 * expected
    assert _eta_after_compile(restart=False) > 5 * expected  # what the bar said before: the compiler's pace


def test_a_disabled_bar_is_left_alone():
    bar = tqdm(total=10, disable=True)
    restart_rate(bar)
    bar.update(3)
    bar.close()


def test_the_training_pipeline_restarts_the_rate_after_its_first_piece_only():
    import numpy as np

    from analysis.train.loop import _Pipeline

    class Recorder:
        def plain(self, start, n, metrics):
            pass

    pipe = _Pipeline(Recorder(), steps=100, start=20, progress=True, run_id="abcdef12")
    pipe.bar.fp = io.StringIO()
    alive = np.array([True, True])
    for step in (20, 30, 40):
        pipe.dispatch("plain", step, 10, ({"loss": np.zeros((2, 10))}, alive))
    pipe.close()
    assert pipe.bar.n == 50 and pipe.bar.initial == 30  # counted from the end of the first (compiling) piece

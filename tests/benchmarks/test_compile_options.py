"""benchmarks.compile_options' bit-identity sample covers every placement and every other job kind of
the report (listed, not computed), and a flag set is refused before any compile when none is given."""

from __future__ import annotations

import pytest

from benchmarks.compile_options import main, sample_jobs
from models import PLACEMENTS


def test_the_sample_has_each_placement_and_each_other_kind():
    names = [name for name, _ in sample_jobs()]
    assert sorted(n.split("/")[1] for n in names if n.startswith("atlas/")) == sorted(PLACEMENTS)
    assert sorted(n.rsplit("/", 1)[1] for n in names if not n.startswith("atlas/")) == [
        "coordcheck",
        "ln_backward",
        "train",
    ]


def test_no_flag_set_is_an_error():
    with pytest.raises(SystemExit):
        main([])


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_rounds_below_one_are_named_before_any_process(bad, capsys):
    with pytest.raises(SystemExit):
        main(["--rounds", bad, ""])
    assert f"argument --rounds: {bad!r} is not a whole number >= 1" in capsys.readouterr().err

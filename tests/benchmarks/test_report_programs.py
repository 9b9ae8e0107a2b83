"""benchmarks.report_programs counts a program once per key, and merges exactly what each count takes
out of the key (value fields, placements' constants, depth); nothing is computed."""

from __future__ import annotations

from analysis.experiments.runs import InitJob
from benchmarks.report_programs import count_programs, program_keys
from models import ModelConfig


def _job(seeds: int = 2, lr: float = 1e-4, **model) -> InitJob:
    return InitJob(
        "v", ModelConfig(**model), seeds=seeds, batch_size=2, seq_len=8, probes=("act_norm",), output_change_lr=lr
    )


def test_each_count_merges_only_what_it_takes_out_of_the_key():
    jobs = [
        ("a", _job(placement="pre")),
        ("a", _job(seeds=3, placement="pre")),  # seeds are not part of a program of one seed
        ("a", _job(placement="pre", norm_eps=1e-6)),  # a value field
        ("b", _job(placement="pre", layers=3)),  # depth
        ("b", _job(placement="post")),
        ("b", _job(placement="deepnorm")),  # Post-LN's structure with other constants
        ("b", _job(placement="post", lr=1e-3)),  # the output-change step size: a value
        ("b", _job(placement="post", embed_scale=2.0)),  # None -> a number selects another path: kept apart
    ]
    counts = count_programs(jobs)
    assert counts["all"] == {
        "jobs": 8,
        "programs": 7,
        "without_value_fields": 5,
        "without_placement_constants": 4,
        "without_depth": 3,
    }
    assert counts["by_experiment"]["a"]["programs"] == 2
    assert counts["by_kind"]["init"]["jobs"] == 8


def test_keys_keep_structural_fields_apart():
    base = program_keys(_job(placement="pre"))
    for other in (_job(placement="pre", d_model=32), _job(placement="pre", norm="rmsnorm"), _job(placement="b2t")):
        keys = program_keys(other)
        assert all(keys[count] != base[count] for count in base)

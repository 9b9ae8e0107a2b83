"""Training configs: every bad input named in the issue is a clear ValueError before any compute, and
configs survive the JSON round trip the store relies on."""

from __future__ import annotations

import dataclasses
import math

import pytest

from analysis.train import OptimConfig, TaskConfig, TrainConfig, train
from analysis.train.config import from_dict, to_dict
from analysis.train.corpus import read_text
from analysis.train.fields import RUNTIME
from analysis.train.tasks import prepare
from models import ModelConfig

SMALL = ModelConfig(layers=1, d_model=16, heads=2, d_ff=32, vocab=128, max_len=64)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: TaskConfig(name="translate"),
            r"unknown task 'translate'; valid choices: copy, reverse, sort, markov, charlm",
        ),
        (
            lambda: OptimConfig(schedule="linear"),
            r"unknown schedule 'linear'; valid choices: inverse_sqrt, constant, cosine",
        ),
        (lambda: OptimConfig(lr=-1e-3), r"lr must be > 0"),
        (lambda: OptimConfig(lr=float("nan")), r"lr must be a finite number, got nan"),
        (lambda: OptimConfig(lr=0.0), r"lr must be > 0"),
        (lambda: OptimConfig(schedule="inverse_sqrt", warmup_steps=0), r"inverse_sqrt' needs warmup_steps >= 1"),
        (
            lambda: TrainConfig(steps=10, optim=OptimConfig(warmup_steps=11)),
            r"warmup_steps=11 is longer than the run \(steps=10\)",
        ),
        (lambda: TrainConfig(seeds=()), r"seeds must be a non-empty tuple"),
        (lambda: TrainConfig(seeds=(0, 0)), r"duplicates"),
        (
            lambda: TrainConfig(probes=("act_grad_norm", "wiggle")),
            r"unknown probes \['wiggle'\]; valid choices: param_grad_norm",
        ),
        (lambda: TrainConfig(probes="cka"), r"must be a tuple of names"),
        (
            lambda: TrainConfig(expensive_probes=("cka",), probe_every=10, expensive_probe_every=15),
            r"positive multiple of probe_every=10",
        ),
        (lambda: TrainConfig(loss_ceiling=-1.0), r"loss_ceiling must be > 0"),
        (lambda: TaskConfig(noise=1.0), r"noise must be < 1.0"),
        (lambda: TaskConfig(length=4, min_length=5), r"min_length=5 > length=4"),
        (lambda: TaskConfig(name="markov", corpus="x.txt"), r"corpus is only read by task 'charlm'"),
        (
            lambda: TaskConfig(name="charlm", corpus="/no/such/file.txt"),
            r"corpus '/no/such/file.txt' is not a readable file",
        ),
        (lambda: TaskConfig(name="charlm", vocab=50), r"vocab is set by the corpus"),
        (lambda: TrainConfig(model=ModelConfig(dropout=0.1)), r"dropout > 0 with probes"),
    ],
)
def test_bad_config_is_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "content, match",
    [(b"", r"is empty"), (b"caf\xe9 au lait", r"is not UTF-8 text \(byte 3"), (b"  \n\t ", r"only whitespace")],
)
def test_bad_corpus_is_a_clear_error_before_compute(tmp_path, content, match):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    cfg = TrainConfig(model=SMALL, task=TaskConfig(name="charlm", corpus=str(path)))
    out = tmp_path / "store"
    with pytest.raises(ValueError, match=match):
        train(cfg, out=out)
    assert not out.exists(), "bad input must not touch the store"


def test_unreadable_corpus(tmp_path):
    # A folder: unreadable as a file even for root (chmod would not stop root from reading).
    with pytest.raises(ValueError, match=r"is not a readable file"):
        TaskConfig(name="charlm", corpus=str(tmp_path))
    with pytest.raises(ValueError, match=r"cannot be read"):
        read_text(str(tmp_path))


@pytest.mark.parametrize(
    "task, model, match",
    [
        (
            TaskConfig(name="charlm", seq_len=60_000),
            SMALL.replace(max_len=70_000),
            r"seq_len=60000 is longer than the corpus' val split",
        ),
        (
            TaskConfig(name="charlm", batch_size=60_000, seq_len=8),
            SMALL,
            r"batch_size=60000 exceeds the \d+ distinct windows",
        ),
        (TaskConfig(name="copy", length=40), SMALL, r"tokens sequences of length 81 > the model's max_len=64"),
        (TaskConfig(name="markov", seq_len=65), SMALL, r"length 65 > the model's max_len=64"),
        (
            TaskConfig(name="sort", vocab=127),
            SMALL,
            r"needs 129 token ids \(127 symbols \+ 2 special\) but the model's vocab is 128",
        ),
        (
            TaskConfig(name="charlm"),
            SMALL.replace(vocab=50),
            r"needs 10\d token ids .* set the model's vocab to at least 10\d",
        ),
    ],
)
def test_task_that_does_not_fit_the_model(task, model, match):
    with pytest.raises(ValueError, match=match):
        prepare(task, model)


def test_round_trip_and_dotted_replace():
    cfg = TrainConfig(
        model=SMALL,
        task=TaskConfig(name="sort", length=6),
        optim=OptimConfig(clip_norm=1.0),
        seeds=(3, 1),
        probes=("act_grad_norm",),
    )
    assert from_dict(to_dict(cfg)) == cfg
    changed = cfg.replace(**{"optim.lr": 3e-4, "model.layers": 3, "steps": 7})
    assert (changed.optim.lr, changed.model.layers, changed.steps) == (3e-4, 3, 7)
    assert changed.task == cfg.task
    with pytest.raises(ValueError, match=r"unknown config field 'optim.rate'; valid choices: optim.lr"):
        cfg.replace(**{"optim.rate": 1.0})
    with pytest.raises(ValueError, match=r"unknown task key\(s\) \['size'\]"):
        from_dict({"task": {"size": 3}})


def test_default_ceiling_is_three_uniform_losses():
    assert TrainConfig(model=SMALL).ceiling == pytest.approx(3 * math.log(128))
    assert TrainConfig(model=SMALL, loss_ceiling=9.0).ceiling == 9.0


def test_runtime_fields_are_declared_and_leave_the_program_key():
    """The fields no compiled function reads (arguments of the program, or the host loop's schedule)
    are declared where they are defined; every other field, a new one too, is in the key."""
    declared = {
        f"{prefix}{f.name}"
        for prefix, cls in (("", TrainConfig), ("optim.", OptimConfig), ("task.", TaskConfig))
        for f in dataclasses.fields(cls)
        if f.metadata.get(RUNTIME)
    }
    assert declared == {
        "steps",
        "seeds",
        "probe_every",
        "probes",
        "expensive_probes",
        "expensive_probe_every",
        "eval_every",
        "eval_batches",
        "loss_ceiling",
        "checkpoint_every",
        "optim.lr",
        "optim.warmup_steps",
    }
    base = TrainConfig(model=SMALL, optim=OptimConfig(schedule="inverse_sqrt", warmup_steps=4), steps=20)
    for change in (
        {"optim.lr": 0.5},
        {"optim.warmup_steps": 9},
        {"seeds": (3, 4)},
        {"steps": 30},
        {"probes": ()},
        {"loss_ceiling": 2.0},
        {"eval_every": 5},
    ):
        assert base.replace(**change).program_key() == base.program_key(), change
    for change in (
        {"model.d_model": 32},
        {"model.placement": "post"},
        {"task.seq_len": 32},
        {"task.data_seed": 1},
        {"optim.weight_decay": 0.0},
        {"optim.schedule": "cosine"},
        {"cka_null": "off"},
    ):
        assert base.replace(**change).program_key() != base.program_key(), change
    hash(base.program_key())

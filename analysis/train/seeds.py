"""How a run's seeds are computed: together in one vmapped program, or each in a program of its own.

Both run the same compiled pieces of analysis.train.step, whose every argument has a leading seed
axis; they differ in how long that axis is:

    vmapped    one call on all seeds (the axis sharded over devices). The accelerator default:
               wide batched kernels are what a GPU is fast at.
    per_seed   one call per seed (an axis of 1), `streams` of them at once on threads. The CPU
               default: XLA's CPU kernels keep the cores poorly busy on these small matrices, and
               one program per core fills them (analysis.runtime.run_on_threads).

A seed's numbers under per_seed are those of the seed trained alone, bit for bit, whichever seeds
ran beside it and however many streams ran them. Vmapped seeds differ from them by float rounding
(batched matmuls sum in another order), which training amplifies over the updates. The mode is how
a run is computed, not what: it is not part of the run's id (analysis.train.store.config_hash), and
run.json records it (`info["seed_programs"]`).

The loop holds `states` in the executor's own form (one seed-stacked TrainState, or a list of
one-seed TrainStates) and asks it for seed-stacked arrays where it needs them: checkpoints, the
alive flags, the final divergence steps.

Per seed, a seed known to have diverged (`dead`: from the alive flags the loop has fetched) is not
computed any more: its state is the frozen one a call would return (a diverged seed's update keeps
its parameters), and its outputs are NaN placeholders for steps after its divergence, whose rows
the loop drops. Vmapped seeds cannot skip one seed; they compute it frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from analysis.runtime import run_on_threads

MODES: tuple[str, ...] = ("vmapped", "per_seed")


def _nan_like(tree: Any) -> Any:
    """A placeholder of `tree`'s structure, shapes and dtypes: NaN where floating, zero elsewhere."""
    fill = lambda x: jnp.full_like(x, jnp.nan) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.zeros_like(x)
    return jax.tree.map(fill, tree)


def _concat(trees: list[Any]) -> Any:
    """One tree whose leaves are the trees' leaves concatenated along the seed axis."""
    return trees[0] if len(trees) == 1 else jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *trees)


class Vmapped:
    """Every seed in one call; `seeds` is the (S,) seed array (sharded like the states)."""

    mode = "vmapped"
    streams = 1

    def __init__(self, seeds: jax.Array):
        self.seeds = seeds

    def init(self, init: Callable) -> Any:
        return init(self.seeds)

    def step(self, fn: Callable, states: Any, *args: Any, dead: frozenset = frozenset()) -> tuple:
        """fn(states, seeds, *args) -> (states, *outputs with a leading seed axis)."""
        return fn(states, self.seeds, *args)

    def evaluate(self, fn: Callable, states: Any, *args: Any, dead: frozenset = frozenset()) -> Any:
        return fn(states.params, *args)

    def stacked(self, states: Any) -> Any:
        return states

    def split(self, stacked: Any) -> Any:
        return stacked

    def alive(self, states: Any) -> jax.Array:
        return states.alive

    def diverged_at(self, states: Any) -> jax.Array:
        return states.diverged_at


class PerSeed:
    """One call per seed, `streams` at once; `seeds` holds one (1,) seed array per seed. Every
    program runs on the device the seeds were put on (the first: several devices mean vmapped
    seeds unless `vmap_seeds=False` is asked for)."""

    mode = "per_seed"

    def __init__(self, seeds: list[jax.Array], streams: int):
        self.seeds, self.streams = seeds, min(streams, len(seeds))

    def _map(self, fn: Callable, per_seed: list[tuple], shared: tuple) -> list:
        return run_on_threads(fn, [(*own, *shared) for own in per_seed], self.streams)

    def init(self, init: Callable) -> list:
        return self._map(init, [(seed,) for seed in self.seeds], ())

    def _live(self, dead: frozenset) -> list[int]:
        live = [i for i in range(len(self.seeds)) if i not in dead]
        return live or [0]  # the loop stops once every seed has diverged; never call with nothing

    def step(self, fn: Callable, states: list, *args: Any, dead: frozenset = frozenset()) -> tuple:
        """fn per live seed -> (one-seed states, *outputs concatenated over all seeds in seed order)."""
        live = self._live(dead)
        computed = dict(zip(live, self._map(fn, [(states[i], self.seeds[i]) for i in live], args)))
        filler = tuple(_nan_like(out) for out in next(iter(computed.values()))[1:])
        outs = [computed[i][1:] if i in computed else filler for i in range(len(states))]
        new_states = [computed[i][0] if i in computed else states[i] for i in range(len(states))]
        return (new_states, *(_concat([out[j] for out in outs]) for j in range(len(filler))))

    def evaluate(self, fn: Callable, states: list, *args: Any, dead: frozenset = frozenset()) -> Any:
        live = self._live(dead)
        computed = dict(zip(live, self._map(fn, [(states[i].params,) for i in live], args)))
        filler = _nan_like(next(iter(computed.values())))
        return _concat([computed.get(i, filler) for i in range(len(states))])

    def stacked(self, states: list) -> Any:
        return _concat(states)

    def split(self, stacked: Any) -> list:
        return [jax.tree.map(lambda leaf, i=i: leaf[i : i + 1], stacked) for i in range(len(self.seeds))]

    def alive(self, states: list) -> jax.Array:
        return _concat([state.alive for state in states])

    def diverged_at(self, states: list) -> jax.Array:
        return _concat([state.diverged_at for state in states])


def choose_mode(n_seeds: int, devices: list | None, vmap_seeds: bool | None) -> str:
    """The run's mode: `vmap_seeds` if given, else per_seed on a CPU with one device (one process,
    no `devices` given) and vmapped elsewhere, sharded over the devices (several CPU devices, as set
    with --xla_force_host_platform_device_count, are a choice to shard). One seed is always
    "vmapped": both modes run the same program then."""
    if vmap_seeds is not None and not isinstance(vmap_seeds, bool):
        raise ValueError(f"vmap_seeds must be True, False or None (the platform's default), got {vmap_seeds!r}")
    if vmap_seeds is False and devices is not None:
        raise ValueError(
            "vmap_seeds=False runs each seed on one device; `devices` shards vmapped seeds: pass one or the other"
        )
    if vmap_seeds is False and jax.process_count() > 1:
        raise ValueError(
            f"vmap_seeds=False runs every seed in this process, but {jax.process_count()} processes "
            "take part (jax.distributed): use vmapped seeds (vmap_seeds=None or True)"
        )
    if n_seeds == 1:
        return "vmapped"
    if vmap_seeds is not None:
        return "vmapped" if vmap_seeds else "per_seed"
    one_cpu = jax.default_backend() == "cpu" and jax.process_count() == 1 and len(jax.devices()) == 1
    return "per_seed" if one_cpu and devices is None else "vmapped"

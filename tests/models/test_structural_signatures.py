"""The structural signatures that pick the expensive tiers' representatives (structural_signatures.py):
they partition the registries, see the structure they claim to see, and ignore only numbers."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

import models.placements as mp
from models import NORMS, PLACEMENTS
from models.layers import Attention
from tests.models.structural_signatures import (
    NORM_GROUPS,
    NORM_REPRESENTATIVES,
    NORM_SIGNATURES,
    PLACEMENT_GROUPS,
    PLACEMENT_REPRESENTATIVES,
    PLACEMENT_SIGNATURES,
    attention_arguments,
    norm_signature,
    placement_signature,
    sub_operations,
)

# Entries whose structure another entry already has, so that the product tiers run them only through
# their representative. A new entry that joins a structure must be added here deliberately: the
# tiers then test it only through the cheap per-entry tests and its representative.
SHARE_A_STRUCTURE = {
    "placements": {
        "skip_scale": "post",
        "deepnorm": "post",
        "completep": "pre",
        "deepscalelm": "pre",
        "tfixup": "none",
    },
    "norms": {n: "layernorm_simple" for n in ("adanorm", "detachnorm", "detach_mean", "detach_var", "identity")},
}


def test_representatives_partition_the_registries():
    for groups, registry, signatures in (
        (PLACEMENT_GROUPS, PLACEMENTS, PLACEMENT_SIGNATURES),
        (NORM_GROUPS, NORMS, NORM_SIGNATURES),
    ):
        members = [name for group in groups.values() for name in group]
        assert sorted(members) == sorted(registry), "every entry in exactly one group"
        assert len({signatures[r] for r in groups}) == len(groups), "one representative per signature"
        assert all(signatures[m] == signatures[r] for r, group in groups.items() for m in group)
    # today: 23 placements in 18 structures, 11 norms in 6 (the numbers the tiers' coverage rests on)
    assert (len(PLACEMENTS), len(PLACEMENT_REPRESENTATIVES)) == (23, 18)
    assert (len(NORMS), len(NORM_REPRESENTATIVES)) == (11, 6)


def test_only_the_listed_entries_share_a_structure():
    for groups, expected in ((PLACEMENT_GROUPS, "placements"), (NORM_GROUPS, "norms")):
        shared = {m: r for r, group in groups.items() for m in group if m != r}
        assert shared == SHARE_A_STRUCTURE[expected], (
            f"{expected} run by the product tiers only through another entry changed: {shared}"
        )


def test_placement_signature_sees_structure_and_ignores_numbers():
    pre = PLACEMENTS["pre"]
    base = placement_signature(pre)
    numbers = dict(
        constants=lambda cfg, spec: {"c": 2.0},
        init_gains=lambda cfg, spec: {"v": 0.5},
        optimizer_rules=lambda cfg, spec: {"lr": 0.5},
        reference="elsewhere",
        name="post",
    )
    for field, value in numbers.items():
        assert placement_signature(dataclasses.replace(pre, **{field: value})) == base, field
    structure = dict(
        final_norm=False,
        embed_norm=True,
        family="post",
        start=mp.start_dual,
        finish=mp.finish_dual,
        norm_slots={**pre.norm_slots, "mlp": ("ln", "mid")},
        layer_params=lambda cfg, spec: {"layer": {"alpha": jnp.zeros(())}},
        layer_constants=lambda cfg, spec: {"scale": (1.0,) * spec.layers},
        segments=mp.PLACEMENTS["mix"].segments,
        wiring={**pre.wiring, "mlp": mp.b2t},
        normalizes_qk=True,
        logit_scale=mp.PLACEMENTS["ngpt"].logit_scale,
    )
    for field, value in structure.items():
        assert placement_signature(dataclasses.replace(pre, **{field: value})) != base, field


def test_sub_operations_follow_the_wiring_into_its_helpers():
    assert sub_operations(mp.pre_ln) == {"branch", "norm"}
    assert sub_operations(mp.b2t) == {"branch", "norm", "site", "layer_input", "is_last"}
    assert sub_operations(mp.rsln) == {"branch", "norm", "step"}  # const is a number, not structure
    # nGPT's per-layer α is read in _ngpt_step, which its wiring calls
    assert sub_operations(mp.ngpt_attention) == {"branch", "param", "qk_scale", "score_scale"}
    assert sub_operations(mp.ngpt_ffn) == {"branch", "param", "hidden_scale"}


def test_norm_signature_is_the_parameter_structure():
    assert norm_signature("layernorm") == (("bias", 1), ("gain", 1))
    assert norm_signature("identity") == norm_signature("detachnorm") == ()
    assert norm_signature("dyt") != norm_signature("derf")  # derf's shift


def test_attention_arguments_see_what_each_block_passes_into_attention():
    # The encoder's finite-difference grid (tests/analysis/probe/test_probes.py) relies on these: the
    # recorder must see each kind of argument, and nothing for a placement that only wraps the branch.
    plain = Attention.__call__
    assert attention_arguments("hybrid") == {"qkv_norm"}
    assert attention_arguments("normformer") == {"head_scale"}
    assert attention_arguments("subln") == {"pre_out_norm"}
    assert attention_arguments("ngpt") == {"qk_scale", "score_scale"}
    for placement in ("pre", "post", "residual", "admin", "sandwich"):
        assert attention_arguments(placement) == frozenset(), placement
    assert Attention.__call__ is plain, "the recording call was left in place"

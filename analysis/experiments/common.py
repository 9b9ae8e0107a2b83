"""What the paper experiments share: probe sets, job builders and feature shorthands.

Every initialization-time job of one architecture uses the same probe set, so the same model at the
same sizes is one job (one hash) whichever experiment asks for it: the 18-layer encoder-decoders
serve Takase's and Xie's claims, the decoder-only depth sweep serves Xiong's, Xie's and the
DeepNorm/Admin claims.
"""

from __future__ import annotations

from typing import Any

from analysis.experiments.claims import Feature
from analysis.experiments.experiment import Harness
from analysis.experiments.runs import InitJob

# Encoder-decoders: gradient profiles and the LN Jacobian gains that locate the shrinkage.
PROBES_ENCDEC = ("param_grad_norm", "act_grad_norm", "ln_jacobian_gain")
# Decoder-only stacks: gradients, stream norms, adjacent cosines, CKA (collapse) and the output change
# after one sign step of 1e-4 (Admin's amplification).
PROBES_DECODER = ("param_grad_norm", "act_grad_norm", "act_norm", "cos_adjacent", "cka", "output_change")

W2 = ("param_grad_norm", "mlp.w2.weight")  # G_l = ‖∂ℒ/∂W2_l‖, the FFN output matrix (Xiong, Takase)
X_GRAD = ("act_grad_norm", "resid_pre")  # g_l = ‖∂ℒ/∂x_l‖ at each layer's input


def encdec_job(h: Harness, placement: str, layers: int, variant: str | None = None, **fields: Any) -> InitJob:
    """An encoder-decoder with `placement` in both stacks unless `enc_placement` is given."""
    return h.init_job(variant or placement, PROBES_ENCDEC, "encdec", placement, layers, **fields)


def decoder_job(h: Harness, placement: str, layers: int, variant: str | None = None, **fields: Any) -> InitJob:
    """A decoder-only (causal LM) stack."""
    return h.init_job(variant or placement, PROBES_DECODER, "decoder", placement, layers, **fields)


def feature(
    name: str,
    part: str,
    variant: str,
    probe: tuple[str, str],
    *,
    layer: int | str | None,
    stack: str = "decoder",
    transform: str = "identity",
    **where: Any,
) -> Feature:
    """A Feature reading `probe` = (quantity, site) of one variant in one part of an experiment frame."""
    quantity, site = probe
    filters = {"part": part, "variant": variant, "stack": stack, "quantity": quantity, "site": site, **where}
    return Feature(name, filters, layer=layer, transform=transform)

"""One layer stack of a model, as a placement sees it (`ModelConfig.stacks()`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StackSpec:
    """One layer stack of a model: what a placement needs to know to wire and initialize it."""

    name: str  # "encoder" | "decoder"
    placement: str
    layers: int
    causal: bool
    cross: bool  # decoder of an encdec: self-attention, cross-attention, FFN
    arch: str
    enc_layers: int
    dec_layers: int

    @property
    def sublayers(self) -> tuple[str, ...]:
        """Sublayer kinds of one layer, in order (TransformerLens names)."""
        return ("attn", "cross", "mlp") if self.cross else ("attn", "mlp")

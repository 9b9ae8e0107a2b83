#!/usr/bin/env python3
"""The PyTorch peer's initialization study: for each seed, build the model, one probed forward and
backward (every hook probe of torch_probe_bench.py: parameter-gradient norms, activation-gradient
norms, hidden norms, cosines, CKA), collect the values. What lnscope's `probe_at_init` does for many
seeds in one vmapped call, written the way a PyTorch user would: a loop over seeds.

Prints one JSON line: total seconds for all seeds (and per seed), after one untimed warm-up seed.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch_probe_bench import Probes, Seq2SeqOrLM


def one_seed(args, seed: int) -> dict:
    torch.manual_seed(seed)
    model = Seq2SeqOrLM(
        "decoder", args.layers, args.d_model, args.heads, args.ffn, args.vocab, args.seq + 1, args.placement
    ).to(args.device)
    probes = Probes(model, "abcde", "tensor", "batched")
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen).to(args.device)
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
    loss.backward()
    rec = probes.collect()
    rec["loss"] = loss.item()
    return rec


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--placement", default="pre")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    one_seed(args, 10_000)  # warm-up: first-call costs (allocator, kernels) are not the study's
    start = time.perf_counter()
    records = [one_seed(args, s) for s in range(args.seeds)]
    total = time.perf_counter() - start
    print(
        json.dumps(
            {
                "impl": "torch",
                "seeds": args.seeds,
                "layers": args.layers,
                "d_model": args.d_model,
                "total_s": total,
                "per_seed_ms": 1e3 * total / args.seeds,
                "finite": all(r["loss"] == r["loss"] for r in records),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()

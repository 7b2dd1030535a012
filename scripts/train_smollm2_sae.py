#!/usr/bin/env python3
"""Train (once; cached) the TopK SAE on SmolLM2-135M layer-6 residual activations and print
its artifact folder. A thin wrapper over saekit.harness.train.ensure_demo_sae.

    python3 scripts/train_smollm2_sae.py                 # demo: 576 -> 4608, k 32
    python3 scripts/train_smollm2_sae.py --size test     # 576 -> 1152, k 16 (the tests' SAE)
    python3 scripts/train_smollm2_sae.py --seed 1 --register smollm2-res-l6
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="demo", choices=["demo", "test"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--register", metavar="NAME", help="also register the artifact under NAME")
    args = ap.parse_args()

    from saekit.harness.train import ensure_demo_sae

    folder = ensure_demo_sae(args.size, seed=args.seed)
    print(folder)
    if args.register:
        from saekit.registry.store import register

        info = register(args.register, folder)
        print(f"{info.name}/{info.version} sha256 {info.sha256}")


if __name__ == "__main__":
    main()

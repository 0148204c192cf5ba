"""Quality of the embedded default: zero-shot vs trained text-to-video R@1 on the synthetic test and temporal
splits, measured in one run (the demo's pipeline: generate world, evaluate, train, evaluate).

    python benchmarks/embedded_default.py --workdir /tmp/petvr-bench

The temporal split pairs every video with its time reversal (the same rendered frames in reverse order), so a model
that averages frames can barely tell a pair apart: it is limited to about half the pairs over the whole split. meanP
averages frames; the sampled frames of a video and its twin differ slightly (per-second sampling picks different
native frames of the reversed clip), so it is near, not exactly at, that bound.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from petvr.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="bench-embedded-default")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    result = run_demo(Path(args.workdir), epochs=args.epochs)
    summary = {split: {"zero_shot_t2v_R@1": result["before"][split]["t2v"]["R@1"],
                       "trained_t2v_R@1": result["after"][split]["t2v"]["R@1"],
                       "ratio": result["after"][split]["t2v"]["R@1"] / max(result["before"][split]["t2v"]["R@1"], 1e-9)}
               for split in ("test", "temporal")}
    print("\nembedded default, text-to-video R@1 (zero-shot -> clip4clip meanP):")
    for split, row in summary.items():
        print(f"  {split:<9} {row['zero_shot_t2v_R@1']:5.1f} -> {row['trained_t2v_R@1']:5.1f}  ({row['ratio']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""How much of an order-prior aligner's precision comes from the prior alone?

`tot` and `tuot` add a temporal-order cost (``otalign.ot.temporal_order_cost``) that places token j
near frame j/N of the utterance. The uniform plan is chance for `uot`, but not for them: the prior
alone, with states that say nothing, already finds roughly where each word is. This script scores a
trained checkpoint's plans and, on the same utterances, the plans of the same aligners when every
frame state is replaced by the utterance's mean state (a constant cost: only the prior and the
marginals act). Both tables are written as CSV (the rows of ``otalign.align.sweep.sweep``).

    python scripts/prior_only_baseline.py --ckpt exp/.../epoch_3.pt --data data/bench3h/test_noisy.jsonl \
        --out results/whisper/prior_only_tuot.csv --eps 0.02 0.05 --rhos 0.03 --order-weights 0.3 1
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="an epoch_N.pt of a run trained with an aligner (it holds the adapter)")
    parser.add_argument("--data", required=True, help="a manifest with word timings, e.g. data/bench3h/test_noisy.jsonl")
    parser.add_argument("--out", required=True, help="CSV path; the trained and the constant-state rows, marked by 'states'")
    parser.add_argument("--num-utterances", type=int, default=64)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.03])
    parser.add_argument("--order-weights", type=float, nargs="+", default=[0.3, 1.0])
    parser.add_argument("--n-iter", type=int, default=200)
    args = parser.parse_args()

    import csv

    from otalign.align.sweep import _read_timed, examples_from_encoder, sweep, trained_teacher
    from otalign.train.system import System

    encode_fn = System.load(args.ckpt).encode_fn()
    utterances = _read_timed(args.data, args.num_utterances)
    trained = examples_from_encoder(utterances, encode_fn, trained_teacher(encode_fn, args.ckpt))
    # the mean state repeated: every frame equally far from every token, so the cost is constant
    constant = [dataclasses.replace(e, frame_states=e.frame_states.mean(0, keepdim=True).expand_as(e.frame_states).clone())
                for e in trained]
    grid = dict(rhos=args.rhos, epsilons=args.eps, order_weights=args.order_weights, n_iter=args.n_iter)
    rows = [dict(states="trained", **r) for r in sweep(trained, aligners=("ot", "tot", "uot", "tuot"), **grid)]
    rows += [dict(states="constant", **r) for r in sweep(constant, aligners=("tot", "tuot"), include_chance=False, **grid)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        knobs = " ".join(f"{k}={r[k]:g}" for k in ("eps", "rho_frames", "order_weight") if not math.isnan(r[k]))
        print(f"{r['states']:9s} {r['aligner']:8s} {knobs:36s} P {r['precision']:.3f}  R {r['token_recall']:.3f}  "
              f"mass on silence/noise {r['mass_on_nonspeech']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Diagnostic: how much of the encoder's gradient comes from the transfer loss?

``L = L_CTC + lambda * L_KT``. L_CTC is summed over an utterance's frames (tens of nats), L_KT is
a mean cosine distance in [0, 2]: at a given lambda, the KT term may be too small to move the
shared encoder at all (only the adapter, which sees no CTC gradient, would learn). This script
measures it instead of guessing: on fixed probe batches of one experiment run's config it
reports ||grad_enc L_CTC||, ||grad_enc lambda*L_KT||, their ratio and their cosine, at
initialisation and after some ordinary training steps.

    python -m bench.grad_balance --system uot_rho0.3_layer0 [--steps 150 --probe-every 50]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/experiment.yaml")
    parser.add_argument("--benchmark", default="synthetic")
    parser.add_argument("--system", default="uot_rho0.3_layer0")
    parser.add_argument("--weight", type=float, default=None, help="lambda to report (default: the config's)")
    parser.add_argument("--steps", type=int, default=150, help="training steps between the first and last probe")
    parser.add_argument("--probe-every", type=int, default=50)
    parser.add_argument("--probe-batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the measurements as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from otalign.data.features import GlobalCMVN
    from otalign.text.cache import targets_from_config
    from otalign.text.tokenizer import CharTokenizer
    from otalign.train.experiment import ExperimentConfig, run_configs
    from otalign.train.trainer import (BatchMaker, DistInfo, build_trainable, compute_cmvn,
                                       compute_loss, kt_weight, load_manifests, lr_lambda, make_loader, seed_epoch)

    spec = ExperimentConfig.load(args.config)
    matches = [c for b, s, seed, c in run_configs(spec) if (b, s, seed) == (args.benchmark, args.system, spec.seeds[0])]
    if not matches:
        parser.error(f"no run {args.benchmark}/{args.system} in {args.config}")
    config = matches[0]
    if config.transfer.aligner == "none":
        parser.error(f"system {args.system} has no transfer loss (aligner 'none')")
    if args.weight is not None:
        config.transfer.weight = args.weight  # the probes and the training steps use the same lambda
    weight = config.transfer.weight
    torch.manual_seed(config.seed)

    info = DistInfo()
    train_utts = load_manifests(config.data.train_manifests, config.data.strict)
    cmvn_path = Path(config.exp_dir) / "cmvn.json"
    cmvn = GlobalCMVN.load(cmvn_path) if cmvn_path.exists() else compute_cmvn(train_utts, config)
    tokenizer = CharTokenizer()
    teacher = targets_from_config(config.teacher)
    trainable = build_trainable(config, tokenizer.vocab_size, teacher.teacher.width)
    encoder_params = [p for p in trainable.asr.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    loader = make_loader(train_utts, config, cmvn, True, info, BatchMaker(tokenizer, teacher))
    seed_epoch(loader, config, 1, info)
    batches = iter(loader)
    probes = [next(batches) for _ in range(args.probe_batches)]

    def probe(step: int) -> dict:
        rows = []
        for batch in probes:
            losses = compute_loss(trainable, batch, info.device)
            g_ctc = _flat_grad(losses["ctc"], encoder_params)
            g_kt = _flat_grad(weight * (losses["kt"] + losses["aux"]), encoder_params)
            cos = float(torch.nn.functional.cosine_similarity(g_ctc, g_kt, dim=0))
            rows.append((float(g_ctc.norm()), float(g_kt.norm()), cos, float(losses["ctc"]), float(losses["kt"])))
        mean = [sum(r[i] for r in rows) / len(rows) for i in range(5)]
        result = {"step": step, "grad_norm_ctc": mean[0], "grad_norm_kt": mean[1],
                  "kt_over_ctc": mean[1] / max(mean[0], 1e-30), "cosine": mean[2], "ctc": mean[3], "kt": mean[4]}
        print(json.dumps(result), flush=True)
        return result

    results = [probe(0)]
    for step in range(1, args.steps + 1):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        losses = compute_loss(trainable, batch, info.device)
        loss = losses["ctc"] + kt_weight(config, step / max(len(loader), 1)) * (losses["kt"] + losses["aux"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        if step % args.probe_every == 0:
            results.append(probe(step))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"system": args.system, "benchmark": args.benchmark, "weight": weight,
                                              "probes": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Token discriminability of the PLM teachers, per model and layer (issue 17, section 2).

    python bench/teacher.py [--sentences 200] [--seed 0] [--models minilm,mpnet] [--out exp/bench/teacher.json]

A transfer target is only worth aligning to if a token's state says which word it is. Measured on
``--sentences`` English sentences drawn (with ``--seed``) from the demo corpus's text source, the
Debian fortunes (``otalign.data.synth.load_fortune_sentences``), normalised as the corpus
transcripts are (lower case, one whitespace word per spoken word). The wordpieces are what
``PLMTeacher.encode`` returns ([CLS]/[SEP] dropped). For each model, every hidden state
(0 = embeddings .. L) and the layer means in ``--means`` (the mean of those layers' states, as
``teacher.layer: [a, b, ...]`` gives):

- ``cos_raw``: mean over sentences of the mean pairwise cosine between the distinct wordpieces of
  one sentence, raw states.
- ``cos_within``: the same after **centring**: subtracting the mean wordpiece state of the whole
  corpus (all wordpieces of all sentences, per model and layer). It removes the direction every
  state shares (anisotropy), so what is left is how much one sentence's tokens share with each
  other: lower = less dominated by one sentence vector.
- ``cos_between``: the same centred cosine between wordpieces of *different* sentences (pairs of
  consecutive sentences in the sample): the level ``cos_within`` would have with no sentence
  component.
- ``top1``: word identification. Each sentence is encoded a second time with its words in a random
  order (a different context with the same words). A word's *prototype* is the mean of its
  wordpiece states in that shuffled sentence (a word that occurs twice: the mean over both). For
  every wordpiece of the original sentence, the nearest prototype among the sentence's distinct
  words (cosine, centred as above) must be its own word: ``top1`` is the fraction of wordpieces for
  which it is. ``chance`` is the mean of 1/(distinct words) over wordpieces. Sentences with one
  distinct word are skipped.
- ``margin``: for the same wordpieces, the mean of (cosine to its own word's prototype) minus (the
  highest cosine to another word's prototype), centred as above; positive = identified, and larger
  = identified with room to spare (top-1 saturates, the margin does not).
- ``top1_utt``: ``top1`` with both sides centred per utterance instead (each sentence's own mean
  removed, as ``teacher.center: true`` does to the targets).

Writes a JSON of the rows and prints a markdown table (docs/alignment.md holds it).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository's otalign importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_MEANS = {"minilm": ["1-3", "4-5", "3-6", "1-6"], "mpnet": ["1-6", "4-8", "6-10", "8-12", "1-12"]}


def corpus_sentences(n: int, seed: int) -> list[str]:
    from otalign.data.synth import load_fortune_sentences, speak_text_and_words

    pool = [" ".join(speak_text_and_words(s)[1]) for s in load_fortune_sentences()]
    pool = [t for t in dict.fromkeys(pool) if len(set(t.split())) >= 2]
    rng = random.Random(seed)
    return rng.sample(pool, min(n, len(pool)))


def shuffled(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(10):  # a different order where one exists
        order = words[:]
        rng.shuffle(order)
        if order != words:
            return " ".join(order)
    return " ".join(words)


def per_sentence(out, n_sent: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(states (n, D), word_index (n,)) per sentence of a batched TeacherOutput."""
    rows = []
    for b in range(n_sent):
        n = int(out.mask[b].sum())
        rows.append((out.states[b, :n], out.word_index[b, :n]))
    return rows


def encode_layers(teacher, texts: list[str], batch_size: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per hidden state: per sentence (states, word_index)."""
    layers: list[list] | None = None
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        outs = teacher.encode_all_layers(chunk)
        if layers is None:
            layers = [[] for _ in outs]
        for k, out in enumerate(outs):
            layers[k] += per_sentence(out, len(chunk))
    return layers


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _mean_pair_cos(a: torch.Tensor, b: torch.Tensor | None = None) -> float | None:
    if b is None:
        n = a.shape[0]
        if n < 2:
            return None
        c = _unit(a) @ _unit(a).T
        return float((c.sum() - c.diagonal().sum()) / (n * (n - 1)))
    return float((_unit(a) @ _unit(b).T).mean())


def _prototypes(states, word_index, words):
    """Per distinct word string of the sentence: the mean of its wordpiece states."""
    protos: dict[str, list[torch.Tensor]] = {}
    for pos in range(states.shape[0]):
        protos.setdefault(words[int(word_index[pos])], []).append(states[pos])
    return {w: torch.stack(v).mean(0) for w, v in protos.items()}


def measure(orig, shuf, texts, shuf_texts) -> dict[str, float]:
    """The metrics of the module docstring for one layer (lists of per-sentence (states, word_index))."""
    everything = torch.cat([s for s, _ in orig])
    mu = everything.mean(0)
    raw, within, between, hits, hits_utt, chance, count, margin = [], [], [], 0, 0, 0.0, 0, 0.0
    for i, ((s, wi), (s2, wi2)) in enumerate(zip(orig, shuf)):
        c = _mean_pair_cos(s)
        if c is not None:
            raw.append(c)
            within.append(_mean_pair_cos(s - mu))
        nxt = orig[(i + 1) % len(orig)][0]
        between.append(_mean_pair_cos(s - mu, nxt - mu))
        words, words2 = texts[i].split(), shuf_texts[i].split()
        for centred, offset in ((False, (mu, mu)), (True, (s.mean(0), s2.mean(0)))):
            protos = _prototypes(s2 - offset[1], wi2, words2)
            names = sorted(protos)
            if len(names) < 2:
                continue
            sims = _unit(s - offset[0]) @ _unit(torch.stack([protos[w] for w in names])).T  # (n, W)
            best = sims.argmax(dim=1)
            correct = sum(names[int(best[p])] == words[int(wi[p])] for p in range(s.shape[0]))
            if centred:
                hits_utt += correct
            else:
                own = torch.tensor([names.index(words[int(wi[p])]) for p in range(s.shape[0])])
                own_sim = sims[torch.arange(s.shape[0]), own]
                others = sims.clone()
                others[torch.arange(s.shape[0]), own] = -2.0
                margin += float((own_sim - others.max(dim=1).values).sum())
                hits += correct
                chance += s.shape[0] / len(names)
                count += s.shape[0]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"cos_raw": mean(raw), "cos_within": mean(within), "cos_between": mean(between),
            "top1": hits / count, "margin": margin / count, "top1_utt": hits_utt / count, "chance": chance / count, "wordpieces": count}


def run(models: list[str], n_sentences: int, seed: int, means: dict[str, list[str]], batch_size: int = 16) -> list[dict]:
    from otalign.text.teacher import parse_layers, teacher_from_config

    texts = corpus_sentences(n_sentences, seed)
    rng = random.Random(seed + 1)
    shuf_texts = [shuffled(t, rng) for t in texts]
    rows = []
    for model in models:
        started = time.perf_counter()
        teacher = teacher_from_config({"model": model, "layer": -1})
        orig = encode_layers(teacher, texts, batch_size)
        shuf = encode_layers(teacher, shuf_texts, batch_size)
        seconds = time.perf_counter() - started
        choices: list[tuple[str, list[int]]] = [(str(k), [k]) for k in range(len(orig))]
        for spec in means.get(model, []):
            layers = parse_layers(spec)
            layers = [layers] if isinstance(layers, int) else layers
            choices.append((f"mean {spec}", layers))
        for label, layers in choices:
            pick = lambda per_layer: [  # noqa: E731
                (torch.stack([per_layer[k][i][0] for k in layers]).mean(0), per_layer[layers[0]][i][1])
                for i in range(len(texts))]
            row = {"model": model, "layer": label, **measure(pick(orig), pick(shuf), texts, shuf_texts)}
            rows.append(row)
            print(f"[bench] {model:6s} layer {label:9s} cos_raw {row['cos_raw']:.3f} cos_within "
                  f"{row['cos_within']:.3f} cos_between {row['cos_between']:.3f} top1 {row['top1']:.3f} "
                  f"margin {row['margin']:.3f} "
                  f"top1_utt {row['top1_utt']:.3f} (chance {row['chance']:.3f})", flush=True)
        print(f"[bench] {model}: {len(texts)} sentences x 2 encoded in {seconds:.1f} s", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | layer | cos raw | cos within (centred) | cos between | top-1 word | margin | "
             "top-1 (utt-centred) | chance |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layer']} | {r['cos_raw']:.2f} | {r['cos_within']:.2f} | "
                     f"{r['cos_between']:.2f} | {r['top1']:.3f} | {r['margin']:.3f} | {r['top1_utt']:.3f} | {r['chance']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="minilm,mpnet")
    p.add_argument("--means", default=None, help="per model, layer ranges to average, e.g. "
                                                 "'minilm:4-5,3-6;mpnet:6-10' (default: %s)" % DEFAULT_MEANS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="exp/bench/teacher.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    means = DEFAULT_MEANS
    if args.means:
        means = {m: specs.split(",") for m, specs in (part.split(":") for part in args.means.split(";"))}
    rows = run(args.models.split(","), args.sentences, args.seed, means)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sentences": args.sentences, "seed": args.seed, "rows": rows}, indent=1))
    print(markdown(rows))
    print(f"[bench] rows written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

import shutil
from pathlib import Path

import pytest

from otalign.data.synth import synthesize_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A real eSpeak NG corpus (40 train / 8 dev / 8+8 test utterances), shared by the train tests."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it)")
    out = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(out, size="tiny", seed=0, jobs=2, progress=False)
    return out


# conf/demo.yaml is the Whisper recipe; these keys make it the from-scratch tiny Conformer-CTC
FROM_SCRATCH_DEMO = ["model.frontend=fbank", "model.freeze_layers=0", "teacher.layer=0"]


def tiny_overrides(corpus, exp_dir, aligner="uot", epochs=2):
    """--set overrides for a model small enough to train in seconds."""
    return [
        f"exp_dir={exp_dir}",
        f"data.train_manifests=[{corpus}/train.jsonl]",
        f"data.dev_manifest={corpus}/dev.jsonl",
        f"data.test_manifests={{test_clean: {corpus}/test_clean.jsonl, test_noisy: {corpus}/test_noisy.jsonl}}",
        f"data.feature_cache_dir={corpus}/fbank_cache",
        f"teacher.cache_dir={corpus}/plm_cache",
        "data.max_batch_seconds=40",
        "model.overrides={d_model: 48, num_layers: 1, ff_dim: 96, num_heads: 4}",
        f"transfer.aligner={aligner}",
        "transfer.n_iter=20",
        f"optim.epochs={epochs}",
        "optim.warmup_steps=5",
        "average_best=2",
        "log_every=1",
    ]


def cer_from_files(manifest, hyp_file):
    """The corpus CER recomputed here from the written hypotheses: a plain Levenshtein distance
    over the normalised characters, summed over utterances, over the reference characters."""
    from otalign.data.manifest import read_manifest
    from otalign.decode.scoring import normalize_for_scoring

    def distance(a, b):
        row = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            prev, row[0] = row[0], i
            for j, y in enumerate(b, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
        return row[-1]

    hyps = dict(line.split("\t", 1) if "\t" in line else (line, "")
                for line in Path(hyp_file).read_text(encoding="utf-8").splitlines())
    refs = {u.id: normalize_for_scoring(u.text) for u in read_manifest(manifest)}
    assert set(hyps) == set(refs), "one hypothesis per utterance"
    edits = sum(distance(refs[uid], normalize_for_scoring(hyps[uid])) for uid in refs)
    return edits / max(1, sum(len(r) for r in refs.values()))

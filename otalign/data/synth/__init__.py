"""A multi-speaker English corpus with ground-truth word timings, synthesised offline by eSpeak NG.

One utterance goes through the package's four parts in order:

1. ``text``: a sentence from Debian fortunes (``load_fortune_sentences``) and the text eSpeak
   speaks for it (``speak_text_and_words``).
2. ``timing``: eSpeak NG speaks it (random voice, rate and pitch); each word's start is eSpeak's own
   WORD event, its end the last loud 5 ms frame before the next word (``synthesize_utterance``).
3. ``imbalance``: in a chosen and recorded fraction of utterances, silence and noise are inserted
   and background noise mixed at a recorded SNR (``ImbalanceConfig``, ``BabbleBank``). Without
   imbalance, eSpeak's output has almost no leading or trailing silence (words cover ~99% of a
   clean utterance; ~42% in ``test_noisy`` of the demo).
4. ``corpus``: jobs, splits disjoint by text and (for test) by voice, fixed shards each in a fresh
   process so the corpus is a function of the seed alone, and the manifests
   (``synthesize_corpus``).
"""

from otalign.data.synth.corpus import SHARD_SIZE, SIZES, SynthFolderBusy, synthesize_corpus, voice_pairs
from otalign.data.synth.imbalance import BabbleBank, ImbalanceConfig
from otalign.data.synth.text import FORTUNES_DIR, load_fortune_sentences, speak_text_and_words
from otalign.data.synth.timing import ACCENTS, END_THRESHOLD_DB, SAMPLE_RATE, VARIANTS, synthesize_utterance

__all__ = [
    "ACCENTS",
    "VARIANTS",
    "SIZES",
    "SHARD_SIZE",
    "SAMPLE_RATE",
    "END_THRESHOLD_DB",
    "FORTUNES_DIR",
    "ImbalanceConfig",
    "BabbleBank",
    "SynthFolderBusy",
    "voice_pairs",
    "load_fortune_sentences",
    "speak_text_and_words",
    "synthesize_utterance",
    "synthesize_corpus",
]

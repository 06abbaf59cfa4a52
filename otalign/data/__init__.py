"""otalign.data: speech data in, features and batches out.

- ``manifest``: the JSONL manifest format (``Utterance``, ``read_manifest``, ``write_manifest``,
  ``normalize_text``).
- ``espeak`` / ``synth``: the eSpeak NG corpus with ground-truth word timings and recorded
  silence/noise (``synthesize_corpus``).
- ``importers``: Kaldi data dirs, LibriSpeech, AISHELL-1 (``import_kaldi``, ``import_librispeech``,
  ``import_aishell``); ``asterisk``: real recorded prompts (``prepare_asterisk``).
- ``features``: ``load_audio``, ``compute_fbank`` (80-dim, 25/10 ms, any input rate), ``GlobalCMVN``,
  ``spec_augment``, ``speed_perturb``.
- ``dataset``: ``SpeechDataset`` (fbank cached on disk), ``collate_batch``, ``BucketBatchSampler``.

Submodules are imported on demand (``from otalign.data.synth import synthesize_corpus``) so that
reading a manifest does not pull in scipy or torch.
"""

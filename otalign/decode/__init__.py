"""otalign.decode: CTC greedy and prefix beam search, jiwer scoring, error files, RTF."""

from otalign.decode.scoring import RealTimeFactor, ScoreReport, score, write_error_file, write_results
from otalign.decode.search import ctc_greedy, ctc_prefix_beam_search, decode_batch, transcribe_batch

__all__ = [
    "RealTimeFactor",
    "ScoreReport",
    "ctc_greedy",
    "ctc_prefix_beam_search",
    "decode_batch",
    "transcribe_batch",
    "score",
    "write_error_file",
    "write_results",
]

"""``otalign align``: the alignment report (metrics table, precision-recall curves, heatmaps).

The implementation lives in :mod:`otalign.align.sweep`; this module is the stable import path
for the command line and the demo::

    from otalign.align.report import align_command
    align_command(ckpt=None, manifest=None, out_dir="exp/align", synthetic=True)
"""

from otalign.align.sweep import EncodeFn, align_command, examples_from_encoder, run_alignment_report

__all__ = ["align_command", "run_alignment_report", "examples_from_encoder", "EncodeFn"]

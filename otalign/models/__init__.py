"""otalign.models: conv2d 4x subsampling, Conformer encoder, CTC head, adapter, inference export."""

from otalign.models.adapter import Adapter
from otalign.models.asr import PRESETS, CTCModel, ModelOutput
from otalign.models.conformer import ConformerEncoder
from otalign.models.subsampling import Conv2dSubsampling4, encoder_frame_times, subsampled_lengths

__all__ = [
    "PRESETS",
    "Adapter",
    "CTCModel",
    "ConformerEncoder",
    "Conv2dSubsampling4",
    "ModelOutput",
    "encoder_frame_times",
    "subsampled_lengths",
]

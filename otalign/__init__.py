"""otalign: CTC speech recognition with PLM knowledge transfer through unbalanced OT alignment."""

__version__ = "0.1.0"

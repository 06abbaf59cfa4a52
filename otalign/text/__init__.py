"""otalign.text: output units (character / SentencePiece tokenizers) and the frozen PLM teacher."""

from otalign.text.tokenizer import CharTokenizer, SentencePieceTokenizer, load_tokenizer, collapse_whitespace

__all__ = ["CharTokenizer", "SentencePieceTokenizer", "load_tokenizer", "collapse_whitespace"]

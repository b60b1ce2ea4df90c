"""Generic building blocks shared by tokenizer families."""

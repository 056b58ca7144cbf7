"""Data for kernel and output comparisons: shipped samples, local files, HF datasets,
and batching for encoders (classification) and decoders (target log-probability)."""
from .batching import classification_batch, lm_batch, make_batch, seq2seq_batch
from .tokenize import tokenize_text
from .readers import (LABEL_TYPES, PAIR_COLUMNS, SAMPLES, SAMPLES_DIR, DataError, Example, check_labels,
                      example_from_record, is_data_to_text, is_local, linearise,
                      load_examples, load_hf, read_file, read_jsonl, read_table, read_text, sample_path)

__all__ = ["LABEL_TYPES", "PAIR_COLUMNS", "SAMPLES", "SAMPLES_DIR", "DataError", "Example", "check_labels", "is_local",
           "example_from_record", "is_data_to_text", "linearise",
           "load_examples", "load_hf", "read_file", "read_jsonl", "read_table", "read_text", "sample_path",
           "classification_batch", "lm_batch", "make_batch", "seq2seq_batch", "tokenize_text"]

"""Shared plumbing of the experiment drivers (ntk_compare, fit_surrogates, fine-tuning):
configuration hashing, result directories with resume, per-item PRNG keys, device and
version records, and CSV / JSON / markdown / plot writers. One module per idea; the
drivers themselves live beside them (`compare`, `surrogates`)."""
from .device import describe_device
from .hashing import config_hash, stable_json, tag
from .keys import indexed_key, name_index, named_key
from .records import timestamp, versions
from .reports import bar_panels, csv_text, json_text, markdown_table, read_json, save_figure, text_table, write_json
from .store import ResultStore, StoreError, open_store

__all__ = ["describe_device", "config_hash", "stable_json", "tag", "indexed_key", "name_index", "named_key",
           "timestamp", "versions", "bar_panels", "csv_text", "json_text", "markdown_table", "read_json",
           "text_table", "write_json", "save_figure", "ResultStore", "StoreError", "open_store"]

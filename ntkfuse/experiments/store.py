"""A result directory that survives interruption and is reused only when it should be.

Layout: `run.json` ({tool, config_hash, config}) and one JSON file per row under
`<rows>/`, a row being one unit of work named by a tuple id: (method,) in ntk_compare,
(kind,) in fit_surrogates, (method, seed) or (method, task, lr, seed) later. Every file
is written atomically as soon as it is done. A saved row carries a tag (a hash of
everything that determines it) and is reused only when the tag matches. A directory
holding another configuration is refused unless `fresh`, which deletes the saved rows
and the named caches first.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from ..files import atomic_write
from .reports import json_text, read_json


class StoreError(ValueError):
    """A result directory that cannot be used for this run."""


_SAFE = re.compile(r"[^A-Za-z0-9_.=+-]")


def row_filename(row_id: Sequence) -> str:
    """File name of a row id: its parts joined by '__' ('fusion.json', 'fusion__3.json').
    Parts with characters unsafe in file names are replaced and a short hash of the id is
    appended, so two ids never share a file."""
    if isinstance(row_id, (str, int)):
        row_id = (row_id,)
    parts = [str(p) for p in row_id]
    if not parts:
        raise StoreError("a row id needs at least one part")
    safe = [_SAFE.sub("-", p) for p in parts]
    name = "__".join(safe)
    if safe != parts or any("__" in p for p in parts) or name.startswith("."):
        name += "~" + hashlib.sha256(repr(parts).encode()).hexdigest()[:8]
    return name + ".json"


@dataclasses.dataclass(frozen=True)
class ResultStore:
    """An opened result directory (see `open_store`)."""
    root: Path
    config_hash: str
    rows: str = "rows"
    tag_field: str = "tag"

    def row_path(self, row_id) -> Path:
        return self.root / self.rows / row_filename(row_id)

    def load_row(self, row_id, tag: str) -> Optional[dict]:
        """The saved row of `row_id` when its tag equals `tag`; else None (compute it)."""
        row = read_json(self.row_path(row_id))
        return row if isinstance(row, dict) and row.get(self.tag_field) == tag else None

    def save_row(self, row_id, row: dict, tag: Optional[str] = None) -> dict:
        """Write `row` (with `tag` set in its tag field, when given) atomically; returns it."""
        if tag is not None:
            row = {**row, self.tag_field: tag}
        atomic_write(self.row_path(row_id), json_text(row))
        return row

    def path(self, name: str) -> Path:
        """A file of the directory (caches, reports)."""
        return self.root / name


def open_store(root: str | Path, config_hash: str, config: Any, *, tool: str, fresh: bool = False,
               rows: str = "rows", tag_field: str = "tag", caches: Sequence[str] = (),
               error: type = StoreError) -> ResultStore:
    """Create `root` or check it holds results of this configuration, then (re)write run.json.

    Refused (with `error`, one line): a directory of another configuration (unless `fresh`)
    and a non-empty directory that is no result directory. `fresh` deletes `<rows>/*.json`
    and `caches` (files or directories under `root`) first."""
    root = Path(root)
    state = root / "run.json"
    old = read_json(state) if state.exists() else None
    if old is not None and old.get("config_hash") != config_hash and not fresh:
        raise error(f"{root} holds results of a different configuration (hash {old.get('config_hash')}, "
                    f"this run {config_hash}); choose another --out or pass --fresh to overwrite them")
    if fresh:
        for f in (root / rows).glob("*.json"):
            f.unlink()
        for name in caches:
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif root.exists() and any(root.iterdir()) and old is None:
        raise error(f"{root} exists and is not a result directory of {tool}; choose another --out")
    atomic_write(state, json_text({"tool": tool, "config_hash": config_hash, "config": config}))
    return ResultStore(root, config_hash, rows, tag_field)


__all__ = ["StoreError", "ResultStore", "open_store", "row_filename"]

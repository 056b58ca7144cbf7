"""Reading examples: shipped samples, local TSV/CSV/JSONL files, Hugging Face datasets.

Every problem is a `DataError` that names the file and, for a bad row, its line
number (the header is line 1), so a user can fix the file without a debugger.
All checks happen here, before any model or kernel work.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

SAMPLES_DIR = Path(__file__).parent / "samples"
SAMPLES = {"sentiment": "sentiment.tsv", "webnlg": "webnlg.jsonl"}
FILE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")
TEXT_COLUMNS = ("sentence", "text")
# Sentence-pair columns (first, second) as GLUE names them; checked before TEXT_COLUMNS
# because QNLI's (question, sentence) also has a "sentence" column.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("question1", "question2"),
                ("premise", "hypothesis"))
# How a label column is read: "class" = integer class index, "score" = a float
# (regression targets such as STS-B's similarity).
LABEL_TYPES = ("class", "score")


class DataError(ValueError):
    """A data source cannot be found, read or parsed."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One input. Classification: `text` (+ optional `label`, an int class index, or a
    float score for regression), and `text_pair` for sentence-pair tasks. Data-to-text:
    `text` is the prompt (linearised triples) and `target` the sentence whose
    log-probability counts."""
    text: str
    label: Optional[int | float] = None
    target: Optional[str] = None
    text_pair: Optional[str] = None


def linearise(triples: Sequence[Sequence[str]]) -> str:
    """GPT-2 prompt for a triple set: 'subject | relation | object ; ... ='."""
    return " ; ".join(" | ".join(t) for t in triples) + " ="


def _check_label_type(label_type: str) -> str:
    if label_type not in LABEL_TYPES:
        raise DataError(f"unknown label type {label_type!r}; choose from {', '.join(LABEL_TYPES)}")
    return label_type


def _label(value: str, where: str, label_type: str = "class") -> Optional[int | float]:
    value = value.strip()
    if value == "":
        return None
    if label_type == "score":
        return _score(value, where)
    try:
        return int(float(value)) if float(value).is_integer() else _bad_label(value, where)
    except ValueError:
        return _bad_label(value, where)


def _bad_label(value, where):
    raise DataError(f"{where}: label {value!r} is not an integer class index")


def _score(value, where) -> float:
    import math
    try:
        if isinstance(value, bool):
            raise ValueError
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: label {value!r} is not a number (a regression score)") from None
    if not math.isfinite(x):
        raise DataError(f"{where}: label {value!r} is not a finite number")
    return x


def read_table(path: str | Path, label_type: str = "class") -> list[Example]:
    """TSV (.tsv, tab-separated, no quoting) or CSV (.csv) with a header naming a text
    column (`sentence` or `text`), or a sentence pair (`sentence1`/`sentence2`,
    `question`/`sentence`, `question1`/`question2`, `premise`/`hypothesis`), and
    optionally `label` (read as `label_type`: "class" ints or "score" floats)."""
    path = Path(path)
    _check_label_type(label_type)
    text = _read_text(path)
    tsv = path.suffix.lower() == ".tsv"
    reader = csv.reader(text.splitlines(), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file") from None
    except csv.Error as e:
        raise DataError(f"{path}: line 1: {e}") from None
    cols = [h.strip().lower() for h in header]
    pair = next(((cols.index(a), cols.index(b)) for a, b in PAIR_COLUMNS if a in cols and b in cols), None)
    tcol = pair[0] if pair else next((cols.index(c) for c in TEXT_COLUMNS if c in cols), None)
    if tcol is None:
        raise DataError(f"{path}: line 1: the header {header} has no text column "
                        f"(expected one of {', '.join(TEXT_COLUMNS)} or a pair "
                        f"{', '.join('/'.join(p) for p in PAIR_COLUMNS)}; columns are "
                        f"{'tab' if tsv else 'comma'}-separated)")
    lcol = cols.index("label") if "label" in cols else None
    out = []
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{path}: line {line}"
            if len(row) != len(cols):
                raise DataError(f"{where}: expected {len(cols)} columns ({', '.join(cols)}), found {len(row)}")
            sentence = row[tcol].strip()
            if not sentence:
                raise DataError(f"{where}: empty {cols[tcol]!r}")
            second = None
            if pair:
                second = row[pair[1]].strip()
                if not second:
                    raise DataError(f"{where}: empty {cols[pair[1]]!r}")
            label = _label(row[lcol], where, label_type) if lcol is not None else None
            out.append(Example(sentence, label, None, second))
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: {e}") from None
    if not out:
        raise DataError(f"{path}: no examples after the header")
    return out


def read_jsonl(path: str | Path, label_type: str = "class") -> list[Example]:
    """One JSON object a line: {"triples": [[s, r, o], ...], "text": ...} (data-to-text)
    or {"sentence"|"text": ..., "label": int} (classification; a pair as in `read_table`,
    a float label with label_type="score")."""
    path = Path(path)
    _check_label_type(label_type)
    out = []
    for i, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        out.append(example_from_record(obj, where, label_type))
    if not out:
        raise DataError(f"{path}: empty file")
    return out


def example_from_record(obj, where: str, label_type: str = "class") -> Example:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "triples" in obj:
        triples, text = obj["triples"], obj.get("text")
        if (not isinstance(triples, list) or not triples or
                not all(isinstance(t, (list, tuple)) and len(t) == 3 and all(isinstance(x, str) for x in t)
                        for t in triples)):
            raise DataError(f"{where}: 'triples' must be a non-empty list of [subject, relation, object] strings")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: missing or empty 'text' (the target sentence)")
        return Example(linearise(triples), None, text.strip())
    pair = next(((a, b) for a, b in PAIR_COLUMNS if a in obj and b in obj), None)
    key = pair[0] if pair else next((k for k in TEXT_COLUMNS if k in obj), None)
    if key is None or not isinstance(obj[key], str) or not obj[key].strip():
        raise DataError(f"{where}: expected 'triples' and 'text', or 'sentence'/'text' (and 'label'); "
                        f"found keys {sorted(obj)}")
    second = None
    if pair:
        second = obj[pair[1]]
        if not isinstance(second, str) or not second.strip():
            raise DataError(f"{where}: missing or empty {pair[1]!r}")
        second = second.strip()
    label = obj.get("label")
    if label is not None and label_type == "score":
        label = _score(label, where)
    elif label is not None and (isinstance(label, bool) or not isinstance(label, int)):
        raise DataError(f"{where}: label {label!r} is not an integer class index")
    return Example(obj[key].strip(), label, None, second)


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if not text.strip():
        raise DataError(f"{path}: empty file")
    return text


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file as one string (perplexity's input); a DataError when it is
    missing, not a file, unreadable or empty (whitespace only)."""
    return _read_text(Path(path))


def read_file(path: str | Path, label_type: str = "class") -> list[Example]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return read_table(path, label_type)
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, label_type)
    raise DataError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")


def sample_path(name: str) -> Path:
    if name not in SAMPLES:
        raise DataError(f"unknown sample {name!r}; shipped samples: "
                        f"{', '.join('sample:' + s for s in SAMPLES)}")
    return SAMPLES_DIR / SAMPLES[name]


def load_hf(spec: str, label_type: str = "class", record=None) -> list[Example]:
    """`name[/config][:split]` through `datasets` (split defaults to validation),
    e.g. `glue/sst2` = SST-2 validation. Imported lazily: optional dependency.
    `record(row, where, label_type) -> Example` maps one row (default
    `example_from_record`; data sets with other field names pass their own)."""
    _check_label_type(label_type)
    record = record or example_from_record
    name, _, split = spec.partition(":")
    split = split or "validation"
    path, _, config = name.partition("/")
    try:
        import datasets
    except ImportError:
        raise DataError(f"data {spec!r} is a Hugging Face dataset, which needs the `datasets` package "
                        "(pip install datasets); or pass a local .tsv/.csv/.jsonl file or "
                        f"{', '.join('sample:' + s for s in SAMPLES)}") from None
    try:
        ds = datasets.load_dataset(path, config or None, split=split)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"cannot load Hugging Face dataset {spec!r} (path={path!r}, config={config or None!r}, "
                        f"split={split!r}): {type(e).__name__}: {first}; the hub may be unreachable "
                        "- pass a local file instead") from None
    out = []
    for i, row in enumerate(ds):
        out.append(record(dict(row), f"{spec}: row {i}", label_type))
    if not out:
        raise DataError(f"Hugging Face dataset {spec!r} is empty")
    return out


def is_local(spec: str) -> bool:
    """Whether `load_examples` reads `spec` as a shipped sample or a local file (else: HF hub)."""
    spec = str(spec)
    return (spec.startswith("sample:") or Path(spec).expanduser().exists() or spec.lower().endswith(FILE_SUFFIXES)
            or spec.startswith(("/", ".", "~")))


def load_examples(spec: str, n: Optional[int] = None, label_type: str = "class") -> list[Example]:
    """Examples from `sample:NAME`, a local file, or a HF dataset id; the first `n`.
    `label_type`: "class" (int labels, the default) or "score" (float labels, regression)."""
    if n is not None and n < 1:
        raise DataError(f"the number of examples must be >= 1, got {n}")
    _check_label_type(label_type)
    spec = str(spec)
    if spec.startswith("sample:"):
        examples = read_file(sample_path(spec[len("sample:"):]), label_type)
    elif is_local(spec):
        examples = read_file(Path(spec).expanduser(), label_type)
    else:
        examples = load_hf(spec, label_type)
    return examples[:n] if n is not None else examples


def is_data_to_text(examples: Iterable[Example]) -> bool:
    return any(e.target is not None for e in examples)


def check_labels(examples: Sequence[Example], label_type: str, num_labels: Optional[int] = None,
                 where: str = "data") -> None:
    """Every example has a label of `label_type`, and class labels lie in [0, num_labels):
    the checks a training set needs before any model work."""
    _check_label_type(label_type)
    if not examples:
        raise DataError(f"{where}: no examples")
    missing = [i for i, e in enumerate(examples) if e.label is None]
    if missing:
        raise DataError(f"{where}: {len(missing)} of {len(examples)} examples have no label (e.g. example "
                        f"{missing[0]}: {examples[missing[0]].text[:40]!r}); training needs a 'label' column")
    if label_type == "score":
        return
    bad = [e.label for e in examples if isinstance(e.label, bool) or not isinstance(e.label, int)]
    if bad:
        raise DataError(f"{where}: label {bad[0]!r} is not an integer class index")
    if num_labels is not None:
        out = sorted({e.label for e in examples if not 0 <= e.label < num_labels})
        if out:
            raise DataError(f"{where}: label{'s' if len(out) > 1 else ''} {', '.join(map(str, out[:5]))} outside "
                            f"the head's classes 0..{num_labels - 1}")

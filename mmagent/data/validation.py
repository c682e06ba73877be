"""Up-front checks of every row, reported all at once with file, row and column.

Run before training starts (and before anything is written), so a bad row fails fast instead of
crashing a DataLoader worker an hour in. Media are decoded in full here (in a thread pool):
a PNG whose pixel data is corrupt or a WAV full of NaN only shows itself when decoded.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mmagent.data.errors import DataError, Problem, table_error
from mmagent.data.tables import SURROGATE_MESSAGE, Table, has_lone_surrogate, is_empty, label_text, parse_number, resolve_media, show_cell, split_labels
from mmagent.encoders.media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, MediaError, load_audio, load_image
from mmagent.metrics import MetricRef
from mmagent.specs import InputSpec, TargetSpec

__all__ = ["DataError", "Problem", "check_columns", "check_rows", "check_training_data", "validate_table", "METRICS", "MIN_TRAIN_ROWS"]

# Validation metrics each target type reports (mmagent/metrics.py computes them; a test keeps the
# two in step). train.metric must name one of these.
METRICS = {
    "classification": ("accuracy", "macro_f1", "mcc", "auroc"),
    "multilabel": ("subset_accuracy", "micro_f1", "macro_f1", "auroc"),
    "regression": ("rmse", "mae", "r2"),
}
# Fewer training rows cannot fit anything, and a 1-row batch breaks BatchNorm layers.
MIN_TRAIN_ROWS = 4
DECODE_THREADS = 4  # media decoding releases the GIL; more threads mostly add memory


def check_columns(table: Table, inputs: list[InputSpec], targets: list[TargetSpec], need_targets: bool = True) -> None:
    """Every column the config names must exist in the table; the error lists close matches."""
    named = [(f"inputs[{i}].column", c) for i, inp in enumerate(inputs) for c in inp.columns]
    if need_targets:
        named += [(f"targets[{i}].column", t.column) for i, t in enumerate(targets)]
    missing = [(key, c) for key, c in named if c not in table.columns]
    if missing:
        listed = "; ".join(f"{key} = {c!r}{_close(c, table.columns)}" for key, c in missing)
        raise DataError(
            [Problem(table.source, -1, c, f"the config names column {c!r} ({key}), which the table does not have", where="header") for key, c in missing],
            header=f"{table.source}: unknown column(s): {listed}. Columns in the file: {table.columns}",
            one_line=True,
        )


def _close(name: str, columns: list[str]) -> str:
    near = difflib.get_close_matches(name, columns, n=3, cutoff=0.6) or [c for c in columns if c.lower() == name.lower()]
    return f" (did you mean {', '.join(repr(c) for c in near)}?)" if near else ""


def _check_media(path: Path, modality: str) -> str | None:
    """None, or why this media file cannot be used. Decodes it in full."""
    if not path.is_file():
        return f"{modality} file not found: {path}"
    if modality == "image":
        return _check_image(path)
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        return f"unsupported audio format {path.suffix!r} (use {sorted(AUDIO_EXTENSIONS)})"
    if path.stat().st_size == 0:
        return f"empty audio file {path.name}"
    if path.suffix.lower() == ".wav":
        expected = _wav_data_bytes(path)
        if expected is not None and expected[0] > expected[1]:
            return f"audio {path.name} is truncated: header promises {expected[0]} data bytes, file holds {expected[1]}"
    import soundfile as sf

    try:
        rate = int(sf.info(str(path)).samplerate)
    except Exception:  # a codec soundfile lacks: the loader falls back to librosa
        rate = 16000
    try:
        load_audio(path, target_sr=rate)  # native rate: no resampling work, only the decode
    except MediaError as e:
        return f"corrupt or unreadable audio {path.name}: {e}"
    except Exception as e:  # decoders raise many types for garbage bytes
        return f"corrupt or unreadable audio {path.name}: {type(e).__name__}: {e}"
    return None


def _check_image(path: Path) -> str | None:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"unsupported image format {path.suffix!r} (use {sorted(IMAGE_EXTENSIONS)})"
    from PIL import Image

    try:
        with Image.open(path) as img:  # reads the header only: the size, before any decoding
            width, height = img.size
    except Image.DecompressionBombError:
        return f"image {path.name} is over the {MAX_IMAGE_PIXELS:,}-pixel limit"
    except Exception as e:
        return f"corrupt or unreadable image {path.name}: {e}"
    if width * height > MAX_IMAGE_PIXELS:
        return f"image {path.name} is {width} x {height} = {width * height:,} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit; downscale it"
    try:
        load_image(path)
    except MediaError as e:
        return f"corrupt or unreadable image {path.name}: {e}"
    return None


def _wav_data_bytes(path: Path) -> tuple[int, int] | None:
    """(promised, present) sizes of a RIFF WAV's data chunk, read from the chunk headers."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            length = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                return length, size - pos - 8
            pos += 8 + length + (length % 2)
    return None


def check_rows(table: Table, inputs: list[InputSpec], targets: list[TargetSpec], need_targets: bool = True) -> list[Problem]:
    """Every problem in the table, sorted by row: missing or undecodable media, empty required
    inputs, text that is not a string, non-numeric or non-finite numbers, missing labels, rows
    with no input at all."""
    check_columns(table, inputs, targets, need_targets)
    problems: list[Problem] = []
    media: list[tuple[int, str, Path, str]] = []  # (row, column, path, modality): decoded below, in threads

    def add(row: int, column: str, message: str) -> None:
        problems.append(Problem(table.source, row, column, message, table.where(row)))

    for row, record in enumerate(_with_progress(table)):
        any_input = False
        for inp in inputs:
            values = [record.get(c) for c in inp.columns]
            if all(is_empty(v) for v in values):
                if inp.required:
                    add(row, inp.columns[0], f"empty {inp.modality} (this input is required)")
                continue
            any_input = True
            if inp.modality == "numeric":
                for c, v in zip(inp.columns, values):
                    try:
                        parse_number(v)
                    except ValueError as e:
                        add(row, c, str(e))
            elif inp.modality == "text" and not isinstance(values[0], str):
                # str(["a", "b"]) would train on "['a', 'b']": refuse rather than guess
                add(row, inp.columns[0], f"text must be a string, got {type(values[0]).__name__} {show_cell(values[0])}")
            elif inp.modality == "text" and has_lone_surrogate(values[0]):
                add(row, inp.columns[0], SURROGATE_MESSAGE)
            elif inp.modality == "categorical" and isinstance(values[0], (list, tuple, dict)):
                add(row, inp.columns[0], f"a category must be a single value, got {type(values[0]).__name__} {show_cell(values[0])}")
            elif inp.modality in ("image", "audio") and isinstance(values[0], (str, Path)):
                media.append((row, inp.columns[0], resolve_media(str(values[0]).strip(), table.base_dir), inp.modality))
            elif inp.modality in ("image", "audio") and (why := media_value_problem(inp.modality, values[0])):
                add(row, inp.columns[0], why)
        if not any_input:
            add(row, ", ".join(c for i in inputs for c in i.columns), "every input is empty")
        if need_targets:
            problems.extend(_check_targets(table, row, record, targets))
    for (row, column, _, _), message in zip(media, _decode_all(media)):
        if message:
            add(row, column, message)
    return sorted(problems, key=lambda p: p.row)


PROGRESS_ROWS = 100_000  # tables from this size show a progress bar while their rows are checked (on a terminal)


def _with_progress(table: Table) -> Iterable[dict[str, Any]]:
    """The table's records, with a progress bar naming the file for a large table on a terminal
    (checking a million rows takes minutes: the user sees it move, and how long it has left)."""
    from tqdm.auto import tqdm

    if len(table) < PROGRESS_ROWS:
        return table.iter_records()
    name = Path(table.source).name
    return tqdm(table.iter_records(), total=len(table), desc=f"checking rows of {name}", unit=" rows", unit_scale=True, disable=None, leave=False)


def media_value_problem(modality: str, value: Any) -> str | None:
    """What is wrong with an in-memory image or audio value (a path is checked by decoding it):
    a number or a list where a file belongs, an array of a shape no image has, a clip without its
    sampling rate. None when it can be used."""
    import numpy as np
    from PIL import Image

    if modality == "image":
        if isinstance(value, (Image.Image, bytes, bytearray)):
            return None
        if hasattr(value, "shape") or isinstance(value, (list, tuple)):
            try:
                arr = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError):
                return "an image array must hold numbers"
            hwc = arr.ndim == 3 and (arr.shape[-1] in (1, 3, 4) or arr.shape[0] in (1, 3))
            if not (arr.ndim == 2 or hwc) or min(arr.shape, default=0) == 0:
                return f"an image array must be H x W, H x W x C or C x H x W with C in 1, 3 (or 4 last), got shape {tuple(arr.shape)}"
            return None if np.isfinite(arr).all() else "the image array holds NaN or infinite values"
        return f"an image must be a file path (relative to the table's folder), bytes, a PIL image or an array, got {type(value).__name__} {show_cell(value)}"
    if isinstance(value, dict) and "array" in value:
        value = (value["array"], value.get("sampling_rate"))
    if isinstance(value, tuple) and len(value) == 2:
        wave, rate = value
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            return f"an audio clip is (samples, sampling rate in Hz); the rate must be a positive integer, got {rate!r}"
        value = wave
    if hasattr(value, "shape") or isinstance(value, list):
        try:
            arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            return "an audio array must hold numbers"
        if arr.ndim not in (1, 2) or arr.size == 0:
            return f"an audio array must be samples or channels x samples, got shape {tuple(arr.shape)}"
        return None if np.isfinite(arr).all() else "the audio array holds NaN or infinite values"
    return f"audio must be a file path (relative to the table's folder), (samples, rate) or an array, got {type(value).__name__} {show_cell(value)}"


def _decode_all(media: list[tuple[int, str, Path, str]]) -> list[str | None]:
    """Decode each distinct file once (a table may name the same file in many rows)."""
    unique = sorted({(path, modality) for _, _, path, modality in media}, key=str)
    if not unique:
        return []
    threads = max(1, min(DECODE_THREADS, os.cpu_count() or 1, len(unique)))
    with ThreadPoolExecutor(threads) as pool:
        verdicts = dict(zip(unique, pool.map(lambda item: _check_media(*item), unique)))
    return [verdicts[(path, modality)] for _, _, path, modality in media]


def _check_targets(table: Table, row: int, record: dict, targets: list[TargetSpec]) -> Iterable[Problem]:
    missing = [t for t in targets if t.type != "multilabel" and is_empty(record.get(t.column))]
    if len(missing) == len([t for t in targets if t.type != "multilabel"]) and missing:
        # With several targets a row may label only some of them; with none it teaches nothing.
        for t in missing:
            yield Problem(table.source, row, t.column, "missing label", table.where(row))
    for t in targets:
        value = record.get(t.column)
        if is_empty(value):
            continue
        if t.type == "regression":
            try:
                parse_number(value)
            except ValueError as e:
                yield Problem(table.source, row, t.column, str(e), table.where(row))
        elif t.type == "classification" and isinstance(value, (dict, list, tuple, set)):
            yield Problem(table.source, row, t.column, f"a label must be one value, got {type(value).__name__} {str(value)[:40]!r}", table.where(row))


def validate_table(
    table: Table, inputs: list[InputSpec], targets: list[TargetSpec], on_bad_row: str = "error", need_targets: bool = True
) -> tuple[Table, list[Problem]]:
    """Check all rows. ``error``: raise :class:`DataError` listing every problem. ``skip``: return
    the table without the bad rows, and the problems (for the run folder's skipped_rows.csv).
    A labelled table (``need_targets``) without data rows is an error."""
    if need_targets and len(table) == 0:
        raise table_error(table.source, "the table has no data rows (only a header?)")
    problems = check_rows(table, inputs, targets, need_targets)
    if not problems:
        return table, []
    if on_bad_row == "error":
        raise DataError(problems, header=f"{len(problems)} problem(s) in {table.source}:")
    bad = {p.row for p in problems}
    keep = [i for i in range(len(table)) if i not in bad]
    if not keep:
        raise DataError(problems, header=f"every row of {table.source} has a problem:")
    return table.subset(keep), problems


class _Splits(Protocol):
    train: Table
    validation: Table
    test: Table | None


S = TypeVar("S", bound=_Splits)


def check_training_data(config: Any, splits: S) -> S:
    """What training needs beyond good rows, checked before any training work: enough rows, at
    least two classes per classification target, every input column filled somewhere, and a
    ``train.metric`` that names a metric the validation reports. Raises :class:`DataError` or
    ``ValueError`` (the metric) with the file and column; returns ``splits`` unchanged."""
    _check_metric_name(config)
    train, validation = splits.train, splits.validation
    if len(train) < MIN_TRAIN_ROWS:
        split = "" if config.data.validation else f" after data.validation_fraction {config.data.validation_fraction:g} went to validation"
        raise table_error(
            train.source,
            f"too few rows: need at least {MIN_TRAIN_ROWS} training rows, have {len(train)}{split} ({len(train) + (0 if config.data.validation else len(validation))} usable data rows)",
        )
    for inp in config.inputs:
        for column in inp.columns:
            if all(is_empty(v) for v in train.column_values(column)):
                raise table_error(
                    train.source,
                    f"column {column!r} ({inp.modality} input) is empty in every training row; fill it or remove the input from the config",
                    column,
                )
    for t in config.targets:
        values = train.column_values(t.column)
        if t.type == "classification":
            labels = sorted({label_text(v) for v in values if not is_empty(v)})
            if len(labels) < 2 and not config.train.init_from:  # a warm start also knows its parent's labels
                raise table_error(
                    train.source, f"label column {t.column!r} has a single class {labels} in the training rows; a classifier needs at least 2 classes", t.column
                )
        elif t.type == "multilabel" and not any(split_labels(v, t.separator) for v in values):
            raise table_error(train.source, f"label column {t.column!r} has no labels in any training row", t.column)
    return splits


def _check_metric_name(config: Any) -> None:
    if not config.train.metric:
        return
    ref = MetricRef.parse(config.train.metric)
    target, name = ref.target, ref.name
    types = {t.column: t.type for t in config.targets}
    if target not in types:
        raise ValueError(f"train.metric {config.train.metric!r}: unknown target {target!r}{_close(target, list(types))}; targets: {list(types)}")
    allowed = METRICS[types[target]]
    if name not in allowed:
        choices = ", ".join(f"{target}/{m}" for m in allowed)
        raise ValueError(
            f"train.metric {config.train.metric!r}: unknown metric {name!r}{_close(name, list(allowed))} for a {types[target]} target; allowed: {choices}"
        )

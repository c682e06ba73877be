"""Cheap up-front checks of every row, reported all at once with file, row and column.

Run before training starts (and before anything is written), so a bad row fails fast instead of
crashing a DataLoader worker an hour in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mmagent.data.tables import Table, is_empty, parse_number, resolve_media
from mmagent.encoders.media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS
from mmagent.specs import InputSpec, TargetSpec

MAX_LISTED = 50


@dataclass
class Problem:
    source: str
    row: int  # 0-based data row
    column: str
    message: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.source}, {self.where or f'row {self.row + 1}'}, column {self.column!r}: {self.message}"


class DataError(ValueError):
    """Bad rows or columns; ``problems`` holds each one."""

    def __init__(self, problems: list[Problem], header: str | None = None) -> None:
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        hint = "\nFix these rows, or set data.on_bad_row: skip to leave them out (they are listed in the run folder)."
        super().__init__((header or f"{len(problems)} problem(s) in the data:") + "\n" + shown + more + hint)


def check_columns(table: Table, inputs: list[InputSpec], targets: list[TargetSpec], need_targets: bool = True) -> None:
    """Every column the config names must exist in the table."""
    named = [(f"inputs[{i}].column", c) for i, inp in enumerate(inputs) for c in inp.columns]
    if need_targets:
        named += [(f"targets[{i}].column", t.column) for i, t in enumerate(targets)]
    missing = [(key, c) for key, c in named if c not in table.columns]
    if missing:
        listed = ", ".join(f"{key} = {c!r}" for key, c in missing)
        raise DataError(
            [Problem(table.source, -1, c, f"the config names column {c!r} ({key}), which the table does not have", where="header") for key, c in missing],
            header=f"{table.source}: unknown column(s): {listed}. Columns in the file: {table.columns}",
        )


def _check_media(path: Path, modality: str) -> str | None:
    if not path.is_file():
        return f"{modality} file not found: {path}"
    if modality == "image":
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            return f"unsupported image format {path.suffix!r} (use {sorted(IMAGE_EXTENSIONS)})"
        from PIL import Image

        try:
            with Image.open(path) as img:
                img.verify()  # reads the whole file's structure without decoding pixels
        except Exception as e:
            return f"corrupt or unreadable image {path.name}: {e}"
        return None
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        return f"unsupported audio format {path.suffix!r} (use {sorted(AUDIO_EXTENSIONS)})"
    if path.suffix.lower() == ".mp3":
        return None if path.stat().st_size > 0 else f"empty audio file {path.name}"
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:
        return f"corrupt or unsupported audio {path.name}: {e}"
    if info.frames <= 0:
        return f"audio {path.name} has no samples (truncated?)"
    if path.suffix.lower() == ".wav":
        expected = _wav_data_bytes(path)
        if expected is not None and expected[0] > expected[1]:
            return f"audio {path.name} is truncated: header promises {expected[0]} data bytes, file holds {expected[1]}"
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
    """Every problem in the table: missing/corrupt media, empty required text, non-numeric values,
    missing labels, rows with no input at all."""
    check_columns(table, inputs, targets, need_targets)
    problems: list[Problem] = []

    def add(row: int, column: str, message: str) -> None:
        problems.append(Problem(table.source, row, column, message, table.where(row)))

    for row, record in enumerate(table.records):
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
            elif inp.modality in ("image", "audio") and isinstance(values[0], (str, Path)):
                message = _check_media(resolve_media(str(values[0]).strip(), table.base_dir), inp.modality)
                if message:
                    add(row, inp.columns[0], message)
        if not any_input:
            add(row, ", ".join(c for i in inputs for c in i.columns), "every input is empty")
        if need_targets:
            problems.extend(_check_targets(table, row, record, targets))
    return problems


def _check_targets(table: Table, row: int, record: dict, targets: list[TargetSpec]) -> Iterable[Problem]:
    missing = [t for t in targets if t.type != "multilabel" and is_empty(record.get(t.column))]
    if len(missing) == len([t for t in targets if t.type != "multilabel"]) and missing:
        # With several targets a row may label only some of them; with none it teaches nothing.
        for t in missing:
            yield Problem(table.source, row, t.column, "missing label", table.where(row))
    for t in targets:
        if t.type == "regression" and not is_empty(record.get(t.column)):
            try:
                parse_number(record.get(t.column))
            except ValueError as e:
                yield Problem(table.source, row, t.column, str(e), table.where(row))


def validate_table(table: Table, inputs: list[InputSpec], targets: list[TargetSpec], on_bad_row: str = "error", need_targets: bool = True) -> tuple[Table, list[Problem]]:
    """Check all rows. ``error``: raise :class:`DataError` listing every problem. ``skip``: return
    the table without the bad rows, and the problems (for the run folder's skipped_rows.csv)."""
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

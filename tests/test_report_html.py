"""report.html (issue 12): one self-contained page per run, written by ``mmagent train`` and
rebuilt by ``mmagent report RUN``; its tables and ECE checked against independent arithmetic on
the run's saved test predictions. (The fit leaderboard part is in tests/test_fit.py, on that
module's fit run.)"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm
from typer.testing import CliRunner

from mmagent import runs
from mmagent.cli import app

LABELS = ["a", "b", "c"]
PNG = b"\x89PNG\r\n\x1a\n"


# -- a parsed page ------------------------------------------------------------------------------
class Page(HTMLParser):
    """Elements with their attributes, the text inside each open element, and tables by class."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.stack: list[tuple[str, dict[str, str], list[str]]] = []
        self.texts: list[tuple[str, dict[str, str], str]] = []  # (tag, attrs, text) of closed elements
        self.tables: list[dict] = []
        self._row: list[tuple[str, dict[str, str], str]] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag in ("img", "meta", "br", "link", "input"):
            return
        self.stack.append((tag, a, []))
        if tag == "table":
            self.tables.append({"attrs": a, "header": [], "rows": []})
        elif tag == "tr":
            self._row = []

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            open_tag, a, text = self.stack.pop()
            joined = "".join(text).strip()
            self.texts.append((open_tag, a, joined))
            if self.stack:
                self.stack[-1][2].append(" " + "".join(text))
            if open_tag in ("td", "th") and self._row is not None:
                self._row.append((joined, a, open_tag))
            elif open_tag == "tr" and self._row is not None:
                row, self._row = self._row, None
                if all(kind == "th" for _, _, kind in row):
                    self.tables[-1]["header"] = [c for c, _, _ in row]
                else:
                    self.tables[-1]["rows"].append([(c, cell_attrs) for c, cell_attrs, _ in row])
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.stack:
            self.stack[-1][2].append(data)

    def table(self, kind: str, target: str | None = None) -> dict:
        found = [t for t in self.tables if t["attrs"].get("class") == kind and (target is None or t["attrs"].get("data-target") == target)]
        assert len(found) == 1, f"{len(found)} tables of class {kind!r}"
        return found[0]

    def column(self, table: dict, name: str) -> list[tuple[str, dict[str, str]]]:
        i = table["header"].index(name)
        return [row[i] for row in table["rows"]]

    def text_of(self, tag: str, **attrs: str) -> list[str]:
        return [t for g, a, t in self.texts if g == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def _value(cell: tuple[str, dict[str, str]]) -> float:
    return float(cell[1]["data-value"])


# -- runs -----------------------------------------------------------------------------------------
def _table(n: int, seed: int) -> pd.DataFrame:
    """x tells the label through noise (so the model errs, and a temperature is fitted); z is noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(3, size=n)
    return pd.DataFrame({"x": y + rng.normal(0, 0.45, n), "z": rng.normal(size=n), "label": [LABELS[i] for i in y]})


def _write(folder: Path, tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return {name: str(folder / f"{name}.csv") for name in tables}


def _train_cli(folder: Path, data: dict[str, str], targets: list[dict], inputs: list[dict] | None = None) -> Path:
    raw = {
        "data": data,
        "inputs": inputs or [{"column": "x", "modality": "numeric"}, {"column": "z", "modality": "numeric"}],
        "targets": targets,
        "fusion": {"type": "concat", "hidden_dim": 16},
        "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "head_lr": 3e-3, "seed": 0, "cpu": True},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    done = CliRunner().invoke(app, ["train", str(folder / "config.yaml"), "-o", str(folder / "run"), "--quiet"])
    assert done.exit_code == 0, done.output
    return folder / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report-html")
    data = _write(folder, {"train": _table(240, 0), "validation": _table(60, 1), "test": _table(90, 2)})
    return _train_cli(folder, data, [{"column": "label", "type": "classification"}])


def _page(run_dir: Path) -> Page:
    return Page((run_dir / runs.REPORT_HTML_FILE).read_text(encoding="utf-8"))


def _ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE written out here, independently of mmagent: bins (i/n, (i+1)/n]."""
    conf, correct = probs.max(1), (probs.argmax(1) == y).astype(float)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return float(sum(abs(conf[bins == b].sum() - correct[bins == b].sum()) for b in range(n_bins)) / len(y))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# -- tests ----------------------------------------------------------------------------------------
def test_train_writes_a_self_contained_page(run: Path) -> None:
    page = _page(run)
    tags = [t for t, _ in page.elements]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert "style" in tags  # the CSS is inline
    for tag, attrs in page.elements:
        for key in ("src", "href"):
            value = attrs.get(key, "")
            assert not value.lower().startswith(("http:", "https:", "//")), f"<{tag} {key}={value[:60]}> points outside the file"
    images = {a["alt"]: a["src"] for t, a in page.elements if t == "img"}
    assert set(images) >= {"plots/curves.png", "plots/confusion_label.png", "plots/ablation.png", "plots/reliability_label.png"}
    for name, src in images.items():
        assert src.startswith("data:image/png;base64,"), name
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG, name


def test_per_class_table_has_the_labels_and_test_supports(run: Path) -> None:
    page = _page(run)
    table = page.table("per-class", "label")
    assert [c for c, _ in page.column(table, "class")] == LABELS
    supports = [int(_value(c)) for c in page.column(table, "support")]
    test = pd.read_csv(run.parent / "test.csv")
    assert sum(supports) == len(test) == 90
    assert supports == [int((test["label"] == lab).sum()) for lab in LABELS]
    # precision / recall as scikit-learn computes them from the saved test predictions
    split, preds = runs.read_predictions(run)  # type: ignore[misc]
    assert split == "test"
    y, pred = preds["label"]["targets"], preds["label"]["logits"].argmax(1)
    p, r, _, _ = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    assert [_value(c) for c in page.column(table, "precision")] == pytest.approx(p.tolist())
    assert [_value(c) for c in page.column(table, "recall")] == pytest.approx(r.tolist())


def test_reliability_section_is_on_the_test_split_with_the_right_ece(run: Path) -> None:
    page = _page(run)
    headings = page.text_of("h3")
    assert any("reliability diagram on the test split" in h for h in headings), headings
    assert [a.get("data-measured-on") for t, a in page.elements if t == "div" and "reliability" in a.get("class", "")] == ["test"]
    row = page.table("calibration", "label")["rows"][0]
    header = page.table("calibration", "label")["header"]
    shown = {h: row[i] for i, h in enumerate(header)}
    temperature = json.loads((run / runs.CALIBRATION_FILE).read_text())["label"]["temperature"]
    assert temperature != 1.0  # fitted on validation, so "before" and "after" differ
    _, preds = runs.read_predictions(run)  # type: ignore[misc]
    logits, y = preds["label"]["logits"].astype(np.float64), preds["label"]["targets"]
    assert len(y) == 90  # the test split, not validation (60 rows)
    assert _value(shown["ECE before"]) == pytest.approx(_ece(_softmax(logits), y), abs=1e-6)
    assert _value(shown["ECE after"]) == pytest.approx(_ece(_softmax(logits / temperature), y), abs=1e-6)
    assert _value(shown["temperature"]) == pytest.approx(temperature)


def test_report_command_rebuilds_both_reports(run: Path, tmp_path: Path) -> None:
    before = _page(run)
    (run / runs.REPORT_HTML_FILE).unlink()
    (run / runs.REPORT_FILE).unlink()
    done = CliRunner().invoke(app, ["report", str(run)])
    assert done.exit_code == 0, done.output
    assert (run / runs.REPORT_FILE).is_file() and "per-class" in (run / runs.REPORT_FILE).read_text()
    after = _page(run)
    assert after.table("per-class", "label")["rows"] == before.table("per-class", "label")["rows"]
    assert after.table("calibration", "label")["rows"] == before.table("calibration", "label")["rows"]
    # a folder mmagent did not create is refused with one line, and nothing is written there
    (tmp_path / "mine").mkdir()
    done = CliRunner().invoke(app, ["report", str(tmp_path / "mine")])
    assert done.exit_code == 2 and "not an mmagent run folder" in done.output
    assert list((tmp_path / "mine").iterdir()) == []


def test_regression_gets_a_scatter_and_residuals_not_class_figures(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frames = {}
    for name, n in (("train", 200), ("test", 50)):
        x, z = rng.normal(size=n), rng.normal(size=n)
        frames[name] = pd.DataFrame({"x": x, "z": z, "price": 3 * x + 10 + rng.normal(0, 0.3, n)})
    run_dir = _train_cli(tmp_path, _write(tmp_path, frames), [{"column": "price", "type": "regression"}])
    page = _page(run_dir)
    alts = {a.get("alt") for t, a in page.elements if t == "img"}
    assert "plots/scatter_price.png" in alts and not any("confusion" in (a or "") or "reliability" in (a or "") for a in alts)
    assert not [t for t in page.tables if t["attrs"].get("class") in ("per-class", "per-label")]
    stats = {row[0][0]: _value(row[1]) for row in page.table("residuals", "price")["rows"]}
    _, preds = runs.read_predictions(run_dir)  # type: ignore[misc]
    residual = preds["price"]["outputs"].astype(float) - preds["price"]["targets"].astype(float)
    assert stats["rows"] == 50
    assert stats["mean residual (bias)"] == pytest.approx(residual.mean(), abs=1e-6)
    assert stats["max |residual|"] == pytest.approx(np.abs(residual).max(), abs=1e-6)
    mae = json.loads((run_dir / runs.METRICS_FILE).read_text())["test"]["price"]["mae"]
    assert stats["MAE"] == pytest.approx(mae, abs=1e-5)


def test_multilabel_gets_a_per_label_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    frames = {}
    for name, n in (("train", 160), ("test", 40)):
        x, z = rng.normal(size=n), rng.normal(size=n)
        tags = ["|".join(t for t, on in (("red", a > 0), ("big", b > 0)) if on) or "none" for a, b in zip(x, z)]
        frames[name] = pd.DataFrame({"x": x, "z": z, "tags": tags})
    run_dir = _train_cli(tmp_path, _write(tmp_path, frames), [{"column": "tags", "type": "multilabel"}])
    page = _page(run_dir)
    table = page.table("per-label", "tags")
    labels = [c for c, _ in page.column(table, "label")]
    assert sorted(labels) == ["big", "none", "red"]
    test = frames["test"]["tags"].str.split("|")
    assert [int(_value(c)) for c in page.column(table, "support")] == [int(test.apply(lambda t, lab=lab: lab in t).sum()) for lab in labels]

"""Training speed features: length-grouped batches, the thread policy, tokenizing once, fused
AdamW and torch.compile (README "Speed")."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import mmagent.training.trainer as trainer_mod
from mmagent.config import ExperimentConfig, config_from_dict
from mmagent.data.dataset import Collator, MultimodalDataset
from mmagent.demo.toy import TINY_BERT, write_toy_table
from mmagent.training.sampling import EpochShuffleSampler, LengthGroupedSampler
from mmagent.training.splits import load_splits
from mmagent.training.threads import CpuFacts, cgroup_quota, choose_threads
from mmagent.training.trainer import build_model, train

# -- length-grouped batches ---------------------------------------------------------------------
LENGTHS = [float(3 + (i * 37) % 97) for i in range(1000)]  # 3..99, spread over the rows


def _batches(sampler: Any, batch_size: int) -> list[list[int]]:
    order = list(sampler)
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def _mean_spread(batches: list[list[int]]) -> float:
    return statistics.mean(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches)


def test_grouped_sampler_yields_every_row_once_per_epoch_with_the_short_batch_last() -> None:
    s = LengthGroupedSampler(LENGTHS, 32, seed=3, group_batches=5)
    for epoch in range(3):
        s.set_epoch(epoch)
        order = list(s)
        assert sorted(order) == list(range(1000)) and len(s) == 1000
        sizes = [len(b) for b in _batches(s, 32)]
        assert sizes[:-1] == [32] * 31 and sizes[-1] == 1000 % 32  # the DataLoader's cut matches the groups


def test_grouped_batches_have_a_much_smaller_length_spread_than_random_ones() -> None:
    grouped = _mean_spread(_batches(LengthGroupedSampler(LENGTHS, 32, seed=0), 32))
    shuffled = _mean_spread(_batches(EpochShuffleSampler(1000, 0), 32))
    assert grouped < shuffled / 10, (grouped, shuffled)


def test_grouped_order_depends_only_on_seed_and_epoch() -> None:
    a, b = LengthGroupedSampler(LENGTHS, 32, seed=7), LengthGroupedSampler(LENGTHS, 32, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)  # batches reshuffled every epoch
    assert list(a) != list(LengthGroupedSampler(LENGTHS, 32, seed=8))
    # the batches themselves come in random order, not sorted by length
    firsts = [LENGTHS[bt[0]] for bt in _batches(a, 32)[:-1]]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_a_fresh_sampler_skipping_the_first_batches_continues_the_epoch_exactly() -> None:
    """What --resume does mid-epoch: a new sampler for the same (seed, epoch), the done batches skipped."""
    from accelerate import skip_first_batches
    from torch.utils.data import DataLoader

    def loader() -> DataLoader:
        s = LengthGroupedSampler(LENGTHS, 16, seed=5, group_batches=4)
        s.set_epoch(1)
        return DataLoader(list(range(1000)), batch_size=16, sampler=s)

    full = [b.tolist() for b in loader()]
    resumed = [b.tolist() for b in skip_first_batches(loader(), 9)]
    assert resumed == full[9:]


# -- the thread policy --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "facts,workers,expected",
    [
        (CpuFacts(affinity=2, quota=None, load=9.0), 0, 1),  # a loaded 2-core box: 1, not 2
        (CpuFacts(affinity=2, quota=None, load=0.1), 0, 2),  # idle: every core
        (CpuFacts(affinity=8, quota=None, load=0.2), 2, 6),  # loader workers need cores too
        (CpuFacts(affinity=16, quota=2.5, load=0.0), 0, 2),  # a container's CPU quota caps it
        (CpuFacts(affinity=4, quota=None, load=3.0, own_load=2.0), 0, 3),  # its own load is not "others"
        (CpuFacts(affinity=4, quota=None, load=None), 0, 4),  # no load average on this OS
    ],
)
def test_thread_policy_picks_from_cores_quota_load_and_workers(facts: CpuFacts, workers: int, expected: int) -> None:
    choice = choose_threads(facts, workers=workers, env={})
    assert (choice.threads, choice.source) == (expected, "auto"), choice.reason


def test_thread_policy_respects_an_explicit_setting_then_omp_then_a_checkpoint() -> None:
    busy = CpuFacts(affinity=2, quota=None, load=9.0)
    assert choose_threads(busy, requested=2, env={"OMP_NUM_THREADS": "1"}).threads == 2
    omp = choose_threads(CpuFacts(8, None, 0.0), env={"OMP_NUM_THREADS": "3"}, previous=5)
    assert (omp.threads, omp.source) == (3, "env")
    assert choose_threads(CpuFacts(8, None, 0.0), env={}, previous=5).threads == 5


def test_cgroup_quota_reads_v2_and_v1_files(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_quota(tmp_path) == 3.0


# -- training with text -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_table(tmp_path_factory.mktemp("toy"), 40, 0)


def _text_config(table: Path, **train_opts: Any) -> ExperimentConfig:
    """Tiny BERT on the toy's text: 36 training rows, batch 8 (5 steps an epoch)."""
    text = {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 32}
    return config_from_dict(
        {
            "data": {"train": str(table), "num_workers": 0},
            "inputs": [{"column": "text", "modality": "text", "encoder": text}, {"column": "x", "modality": "numeric"}],
            "targets": [{"column": "label"}],
            "fusion": {"type": "concat", "hidden_dim": 16},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 1, **train_opts},
        }
    )


def test_text_is_tokenized_once_and_batches_pad_to_their_longest(toy: Path) -> None:
    cfg = _text_config(toy)
    splits = load_splits(cfg)
    model = build_model(cfg, splits.train)
    pre = model.encoders["text"].preprocessor
    calls = {"n": 0}
    tokenize = pre.tokenizer.__call__

    class Counting(type(pre.tokenizer)):  # type: ignore[misc]
        def __call__(self, *a: Any, **k: Any) -> Any:
            calls["n"] += 1
            return tokenize(*a, **k)

    pre.tokenizer.__class__ = Counting
    ds = MultimodalDataset(splits.train, model, training=True)
    warm = calls["n"]
    for _ in range(2):  # two epochs
        items = [ds[i] for i in range(len(ds))]
    assert calls["n"] == warm, "rows were tokenized again on every pass"
    assert not pre._ids, "the model's own preprocessor must not keep the dataset's tokens"
    batch = Collator(model)(items[:8])
    ids = batch["inputs"]["text"]["input_ids"]
    assert ids.shape[1] == max(len(it["features"]["text"]["input_ids"]) for it in items[:8]) < 32
    lengths = ds.lengths()
    assert lengths is not None and max(lengths) == 1.0 and len(set(lengths)) > 1


def test_killed_run_with_grouped_batches_resumes_bit_identical(toy: Path, tmp_path: Path) -> None:
    # threads pinned: the policy follows the machine's load, and another count changes sums' last bits
    cfg = _text_config(toy, checkpoint_every_steps=3, threads=1)
    train(cfg, tmp_path / "ref", progress=False)
    events = [json.loads(s) for s in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert next(e for e in events if e.get("event") == "speed")["batches"] == "LengthGroupedSampler"

    class Killed(Exception):
        pass

    calls = {"n": 0}

    def kill_after_7() -> bool:
        calls["n"] += 1
        if calls["n"] == 7:
            raise Killed
        return False

    with pytest.raises(Killed):  # checkpoint after step 6 (epoch 2, one batch in), killed at step 7
        train(cfg, tmp_path / "run", progress=False, stop_requested=kill_after_7)
    train(cfg, tmp_path / "run", resume=True, progress=False)
    a, b = load_file(tmp_path / "ref" / "model" / "model.safetensors"), load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def _spy_optimizer(monkeypatch: pytest.MonkeyPatch) -> list[torch.optim.Optimizer]:
    made: list[torch.optim.Optimizer] = []
    real = trainer_mod.make_optimizer

    def spy(*a: Any, **k: Any) -> torch.optim.Optimizer:
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr(trainer_mod, "make_optimizer", spy)
    return made


@pytest.mark.parametrize("choice,fused", [("auto", True), (False, False)])
def test_fused_adamw_reaches_the_optimizer(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choice: Any, fused: bool) -> None:
    made = _spy_optimizer(monkeypatch)
    train(_text_config(toy, epochs=1, max_steps=1, fused_optimizer=choice), tmp_path / "run", progress=False)
    assert bool(made[0].defaults["fused"]) is fused  # auto: torch >= 2.4 has a fused CPU kernel


@pytest.mark.slow
def test_compile_flag_compiles_the_trainable_encoders_and_trains(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[Any] = []
    real = trainer_mod.compile_encoders

    def spy(model: Any) -> list[str]:
        names = real(model)
        compiled.extend(model.encoders[n] for n in names)
        return names

    monkeypatch.setattr(trainer_mod, "compile_encoders", spy)
    result = train(_text_config(toy, epochs=1, max_steps=2, compile=True), tmp_path / "run", progress=False)
    assert {e.spec.modality for e in compiled} == {"text", "numeric"}
    assert all(e._compiled_call_impl is not None for e in compiled)  # nn.Module.compile ran
    losses = [json.loads(s)["loss"] for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in s]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert result.global_step == 2


def test_hf_backbones_ask_for_sdpa_attention_and_fall_back_without_it() -> None:
    from mmagent.encoders.hf_backbone import _with_sdpa
    from mmagent.specs import EncoderSpec

    spec = EncoderSpec(source="hf", name="bert", pretrained=False, modality="text", config=TINY_BERT)
    asked: list[dict[str, Any]] = []

    def load(**kw: Any) -> Any:
        asked.append(kw)
        if kw and no_sdpa:
            raise ValueError("BertModel does not support an attention implementation through torch.nn.functional.scaled_dot_product_attention")
        return kw.get("attn_implementation", "default")

    no_sdpa = False
    assert _with_sdpa(spec, load) == "sdpa"
    no_sdpa = True
    assert _with_sdpa(spec, load) == "default" and asked[-2:] == [{"attn_implementation": "sdpa"}, {}]
    told = spec.model_copy(update={"config": {**TINY_BERT, "attn_implementation": "eager"}})
    assert _with_sdpa(told, load) == "default" and asked[-1] == {}  # the config's choice goes through spec.config
    from mmagent.encoders import build_encoder

    assert build_encoder(spec).backbone.config._attn_implementation == "sdpa"  # a real tiny BERT

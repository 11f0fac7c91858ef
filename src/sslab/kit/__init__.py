"""What every epoch loop needs, written once: pretraining (`sslab.pretrain`), SCAN's two training stages, the
standard linear probe and the semi-supervised fine-tune all run on `EpochLoop`. One module per concern:

- `kit.loop`: `EpochLoop`, the loop itself (steps, progress, NaN stop, checkpoints after a signal and each epoch);
- `kit.position`: where a loop is (`BatchSource`, `LoopPosition`) and the exact-resume state (`loop_state`,
  `restore_position`, `LoopCheckpoint`);
- `kit.signals`: SIGINT/SIGTERM and the time limit as a flag checked between steps (`StopFlag`, `Interrupted`);
- `kit.metrics`: per-epoch sums and means on the device, the NaN check, metrics.jsonl and TensorBoard (`EpochLog`).
"""
from sslab.kit.loop import STEP_OBSERVERS, EpochLoop
from sslab.kit.metrics import EpochLog, accumulate, epoch_means, finite_weights, non_finite
from sslab.kit.position import (
    BatchSource,
    LoopCheckpoint,
    LoopPosition,
    LoopSettings,
    as_input,
    loop_state,
    matching_checkpoint,
    restore_position,
    seed_everything,
)
from sslab.kit.signals import Interrupted, NonFiniteLoss, StopFlag

__all__ = ["BatchSource", "EpochLog", "EpochLoop", "LoopCheckpoint", "LoopSettings", "matching_checkpoint",
           "Interrupted", "LoopPosition", "NonFiniteLoss", "StopFlag", "accumulate", "as_input", "epoch_means",
           "finite_weights", "non_finite", "loop_state", "restore_position", "seed_everything", "STEP_OBSERVERS"]

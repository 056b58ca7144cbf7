"""Fine-tuning of full and compressed models (the paper's recipe, METHOD.md §5):
tasks, the AdamW schedule, fixed-shape batches, jitted train/eval steps and the epoch
loop with dev evaluation and orbax checkpoints. Greedy decoding (`decode`) and task
metrics (`metrics`) live beside them."""
from .batches import batches, bucket_lengths, encode, num_batches
from .optim import decay_mask, linear_schedule, optimizer, warmup_steps
from .tasks import GLUE, KINDS, FinetuneError, Task, check_head, get_task, task_names
from .train import (TrainConfig, check_data, eval_outputs, evaluate, finetune, load_state, loss, peak_memory,
                    save_state, split_dev, steps, task_metrics, token_nll)

__all__ = ["batches", "bucket_lengths", "encode", "num_batches", "decay_mask", "linear_schedule", "optimizer",
           "warmup_steps", "GLUE", "KINDS", "FinetuneError", "Task", "check_head", "get_task", "task_names",
           "TrainConfig", "check_data", "eval_outputs", "evaluate", "finetune", "load_state", "loss",
           "peak_memory", "save_state", "split_dev", "steps", "task_metrics", "token_nll"]

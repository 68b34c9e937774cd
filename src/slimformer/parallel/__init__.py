"""Parallel execution applied from outside the model: data, tensor, pipeline parallel and serving.

One `apply_*` per parallelism, as in torchtitan, each checked up front by a `validate_*` that states the
rule and the numbers before any process starts:

- `data.apply_ddp` / `data.apply_fsdp` (FSDP2 `fully_shard` per block): training with atomic checkpoints
  and resume (`slimformer parallel ddp`).
- `tensor.apply_tp` with the plan `tensor.tp_plan(model)`: {submodule: ColwiseParallel / RowwiseParallel}
  for every attention and MLP, from the family's `tp_plan` (`slimformer parallel tp`).
- `pipeline.build_stage` (the family's `stage_parts`) + `torch.distributed.pipelining` GPipe / 1F1B
  (`slimformer parallel pp`).
- `jobs`: what each rank runs for ddp / tp / pp (timing and the comparison with one process); the
  technique modules above hold no harness.
- `serve.Server`: N processes x T threads, bounded queue, dynamic batching (`slimformer parallel serve`).
- `launch.launch`: torchrun (`python -m torch.distributed.run`) plus a heartbeat watchdog that ends the job
  within seconds when a rank dies or hangs, naming it; `worker` is the program torchrun starts.

Modules are imported on use: `torch.distributed` pieces are slow to import and not needed elsewhere.
"""

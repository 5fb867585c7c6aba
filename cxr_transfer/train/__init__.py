"""The training job: run setup (phases, frozen features, batches), the loop (optimizer, schedules,
checkpoints, fit) and DDP. Built on cxr_transfer.runtime; nothing but the train stage, the bench
and this package imports it."""

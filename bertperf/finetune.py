"""Fine-tuning launcher script: `bertperf finetune` as a file DeepSpeed's launcher can start.

    deepspeed --num_gpus 2 bertperf/finetune.py glue --task mrpc --data_dir glue_data/MRPC \\
        --model CKPT --output_dir OUT --deepspeed_config configs/ds-finetune.json [--bf16]
    python bertperf/finetune.py glue ...        # the same as `bertperf finetune glue ...`

On CPU `--num_gpus N` means N ranks (gloo). The arguments are those of `bertperf finetune`
(`bertperf.finetune.cli`); `--deepspeed_config` selects the DeepSpeed engine
(`bertperf.finetune.ds`: ZeRO 0-2, bf16, sharded evaluation, best checkpoint and early stopping
as in the plain run). Imports resolve to the package `bertperf/finetune/`, not this file.
After a DeepSpeed run every rank ends with os._exit once its outputs are flushed (see
`bertperf.train.engine.end_process_after_distributed_run`: interpreter teardown could abort a rank).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # `python bertperf/finetune.py` puts bertperf/ first on sys.path, where its subpackages
    # (data, model, utils, finetune, ...) would shadow top-level modules of the same names: drop it.
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
        sys.path.pop(0)
    # training runs on tcmalloc (re-executes this process once; bertperf.utils.malloc says why)
    from bertperf.utils.malloc import relaunch_with_tcmalloc

    relaunch_with_tcmalloc()


def main(argv: list[str] | None = None) -> int:
    from bertperf.finetune.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    from bertperf.train.engine import end_process_after_distributed_run
    from bertperf.utils.errors import run_cli

    code = run_cli(lambda: main(), prog="bertperf finetune")
    # A DeepSpeed run leaves gloo threads that must not meet interpreter teardown: every rank
    # ends here with os._exit once its outputs are flushed (bertperf.train.engine.end_process_after_distributed_run).
    end_process_after_distributed_run(code)
    sys.exit(code)

"""The `bertperf` command. Each subcommand lives in its own module with a `main(argv)`; this file
only dispatches, importing the module lazily so `bertperf --help` stays fast."""
from __future__ import annotations

import importlib
import sys

from bertperf.utils.errors import run_cli

# name -> (module with main(argv) -> int, one-line help)
COMMANDS = {
    "prepare": ("bertperf.data.prepare", "Wikipedia dump or text -> masked-LM/NSP HDF5 shards"),
    "vocab": ("bertperf.data.vocab", "train a WordPiece vocab.txt from a corpus"),
    "inspect": ("bertperf.data.inspect", "show instances of a shard decoded, and shard statistics"),
    "convert-tfrecord": ("bertperf.convert.tfrecord", "Google TFRecord pre-training files -> HDF5 shards"),
    "export-checkpoint": ("bertperf.train.checkpoint", "a pre-training checkpoint -> one fp32 Hugging Face directory"),
    "finetune": ("bertperf.finetune.cli", "fine-tune on GLUE, SQuAD v1.1/v2.0, NER or TNEWS"),
    "report": ("bertperf.report.report", "throughput report (markdown + HTML with plots) from runs and benches"),
}
# commands that train: their process runs on tcmalloc (bertperf.utils.malloc)
TRAINING = {"finetune"}


def usage() -> str:
    lines = ["usage: bertperf COMMAND [options]   (bertperf COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # called as the `bertperf` command, not from Python
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bertperf: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if name in TRAINING and own_process:
        from bertperf.utils.malloc import relaunch_with_tcmalloc

        relaunch_with_tcmalloc()  # before the command's imports: the process starts again once
    module = importlib.import_module(COMMANDS[name][0])
    return run_cli(lambda: module.main(rest), prog=f"bertperf {name}")


if __name__ == "__main__":
    sys.exit(main())

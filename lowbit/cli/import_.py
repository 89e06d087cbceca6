"""python -m lowbit import --from gptq|awq|compressed-tensors|hqq|bitnet SRC DST.

Converts a quantized Hugging Face checkpoint directory into a lowbit one (see
:mod:`lowbit.importers.checkpoint`), printing one line per quantized layer: what it was and
what it became, or why it was refused. Exit status: 0 written, 1 refused or malformed source
(nothing written), 2 bad arguments. Load the result with ``import lowbit.hf`` and
``AutoModelForCausalLM.from_pretrained(DST)``.
"""
from __future__ import annotations

import sys

FORMATS = ("gptq", "awq", "compressed-tensors", "hqq", "bitnet")


def add_arguments(p) -> None:
    p.add_argument("--from", dest="source_format", required=True, choices=FORMATS,
                   help="format of the source checkpoint")
    p.add_argument("src", metavar="SRC", help="checkpoint directory (config.json + *.safetensors)")
    p.add_argument("dst", metavar="DST", help="new directory for the lowbit checkpoint (must not exist)")
    p.add_argument("--quiet", action="store_true", help="print only the summary and refusals")


def run(args) -> int:
    from ..importers.checkpoint import ConversionRefused, convert_checkpoint

    try:
        report = convert_checkpoint(args.src, args.dst, args.source_format)
    except ConversionRefused as e:
        for line in e.report.lines():
            if not args.quiet or not line.startswith("mapped"):
                print(line)
        print(f"lowbit import: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"lowbit import: {e}", file=sys.stderr)
        return 1
    for line in report.lines():
        if not args.quiet or not line.startswith("mapped"):
            print(line)
    print(f"wrote {args.dst}")
    return 0

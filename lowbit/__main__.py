"""Command line: python -m lowbit {demo, sweep, tune, check, import}.

Each subcommand lives in lowbit/cli/<name>.py (``import`` in import_.py, a keyword) with
``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": "quantize the embedded MiniLM (or --model DIR) with each scheme and compare to fp32",
    "sweep": "time the kernels against F.linear fp16 over shapes x batch sizes x schemes",
    "tune": "autotune kernel configs on this GPU and write the cache",
    "check": "compile every kernel x config for sm_80/sm_90 without a GPU and gate on spills/shared memory",
    "import": "convert a GPTQ/AWQ/compressed-tensors/HQQ/BitNet checkpoint directory to a lowbit one",
}
MODULES = {"import": "import_"}  # subcommands whose module name differs (Python keywords)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowbit", description="lowbit: low-bit Triton kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = f"lowbit.cli.{MODULES.get(name, name)}"
        try:
            modules[name] = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    if args.command not in modules:
        print(f"lowbit: the '{args.command}' command is not available in this build", file=sys.stderr)
        return 2
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

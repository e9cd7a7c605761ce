"""What every command-line script shares: help that shows each flag's default, a --device check, SIGTERM
handled like Ctrl-C, and the command line of a benchmark script."""
import argparse
import json
import signal
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and ends each flag's help with `(default: X)`.

    Left out where the help already states its default, for switches (default off) and for flags
    without a default or with an empty one (their help says what happens when they are not given).
    """

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if not action.option_strings or default is None or default is False or default in ("", argparse.SUPPRESS) \
                or "default" in text:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def check_device(name):
    """Stop with one line when torch cannot use device `name` (e.g. --device cuda on a machine without a GPU)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"--device {name}: not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SystemExit(f"--device {name}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise SystemExit(f"--device {name}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise SystemExit(f"--device {name}: only cpu and cuda devices are supported")
    return device


def exit_on_sigterm():
    """Make SIGTERM (kill, scancel, a time limit) leave through SystemExit, as Ctrl-C leaves through
    KeyboardInterrupt, so that `finally` blocks run and temporary files and folders are removed."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def benchmark_main(doc, run, argv=None):
    """`python bench/bench_NAME.py`: --help describes the benchmark without running it; otherwise run()
    and print its JSON. An interrupted run removes its temporary files."""
    argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter).parse_args(argv)
    exit_on_sigterm()
    print(json.dumps(run(), indent=2))
    return 0

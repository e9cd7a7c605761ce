"""Run every bench/bench_*.py and merge their `run()` dicts into one JSON file.

    python bench/run.py --out bench/results.json [--only features ...]

Each benchmark reports speeds and ratios measured in the same run; nothing here is asserted.
A benchmark that fails is recorded as {"error": ...} and the exit status is non-zero.
"""
import argparse
import importlib.util
import sys
import time
import traceback
from pathlib import Path

from feature_extraction.atomic import write_json
from feature_extraction.cli import exit_on_sigterm

BENCH_DIR = Path(__file__).resolve().parent


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(BENCH_DIR / "results.json"), help="merged results (default bench/results.json)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="run only these benchmarks (NAME of bench_NAME.py); default: all")
    args = p.parse_args(argv)
    exit_on_sigterm()  # a killed run removes the benchmarks' temporary files, as Ctrl-C does
    paths = sorted(BENCH_DIR.glob("bench_*.py"))
    if args.only:
        paths = [q for q in paths if q.stem.removeprefix("bench_") in args.only]
    results, failed = {}, 0
    for path in paths:
        name = path.stem.removeprefix("bench_")
        print(f"bench {name} ...", flush=True)
        start = time.perf_counter()
        try:
            results[name] = load(path).run()
        except Exception as e:
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            failed += 1
        results[name]["bench_seconds"] = round(time.perf_counter() - start, 1)
    write_json(args.out, results)
    print(f"wrote {args.out} ({len(results)} benchmarks, {failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

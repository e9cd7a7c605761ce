"""`make notebooks`: execute notebooks/*.ipynb on a demo output folder with this interpreter's kernel.

    python -m vmnet.notebooks [--demo_dir demo_out] [--out DEMO_DIR/notebooks] [NOTEBOOK ...]

The notebooks read $VMR_DEMO_DIR (what `make demo` writes); this sets it to --demo_dir. They run
from the repo root on a kernel started with this very Python (sys.executable, the venv's pinned
ipykernel), never whichever `python` a global kernelspec or the PATH would pick. The executed
copies, with their outputs, go to --out; the committed notebooks stay without outputs.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def kernel_manager(spec_root):
    """A KernelManager whose kernel "python3" is `sys.executable -m ipykernel_launcher`."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = Path(spec_root) / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (vmr)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def execute(path, demo_dir, timeout=600):
    """Run every cell of the notebook at `path` with VMR_DEMO_DIR=demo_dir; return the executed notebook.

    Raises nbclient's CellExecutionError (naming the cell and the traceback) on the first error.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    previous = os.environ.get("VMR_DEMO_DIR")
    os.environ["VMR_DEMO_DIR"] = str(Path(demo_dir).resolve())  # the kernel inherits this environment
    try:
        with tempfile.TemporaryDirectory(prefix="vmr_kernel_") as spec_root:
            km = kernel_manager(spec_root)
            client = NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(REPO)}})
            try:
                client.execute()
            finally:  # nbclient leaves a kernel it was handed running
                if km.has_kernel:
                    km.shutdown_kernel(now=True)
    finally:
        if previous is None:
            os.environ.pop("VMR_DEMO_DIR", None)
        else:
            os.environ["VMR_DEMO_DIR"] = previous
    return nb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every notebooks/*.ipynb)")
    parser.add_argument("--demo_dir", default="demo_out", help="output of `make demo` the notebooks read (default: demo_out)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the executed copies (default: DEMO_DIR/notebooks)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default: 600)")
    args = parser.parse_args(argv)

    import nbformat
    from nbclient.exceptions import CellExecutionError

    from feature_extraction.atomic import write_text

    if not Path(args.demo_dir).is_dir():
        print(f"{args.demo_dir}: no such folder; run `make demo` first (or pass --demo_dir)", file=sys.stderr)
        return 1
    out = args.out or Path(args.demo_dir) / "notebooks"
    failed = 0
    for path in args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb")):
        start = time.perf_counter()
        try:
            nb = execute(path, args.demo_dir, args.timeout)
        except CellExecutionError as e:
            print(f"{path}: {e}", file=sys.stderr)
            failed += 1
            continue
        write_text(out / path.name, nbformat.writes(nb))
        print(f"{path}: ran in {time.perf_counter() - start:.1f} s -> {out / path.name}")
    if failed:
        print(f"{failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

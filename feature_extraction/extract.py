"""Extract per-second features: the command line of the extraction pass (feature_extraction/pipeline.py) with
every feature token; `python feature_extraction/extract.py --help` lists them and their flags."""
import importlib
import sys

from feature_extraction import pipeline

TOKENS = {
    "resnet": "feature_extraction.resnet",
    "clip": "feature_extraction.clip",
    "vggish": "feature_extraction.vggish",
    "i3d": "feature_extraction.i3d",
    "flow": "feature_extraction.flowProcessor",
    "avpeaks": "feature_extraction.avpeaks",
    "wav2clip": "feature_extraction.wav2clip",
}


def feature_modules():
    """{token: module}, imported here (not at start-up) so that `import extract` stays cheap."""
    return {token: importlib.import_module(name) for token, name in TOKENS.items()}


def run(argv=None):
    """pipeline.run with every token: returns the inputs that failed (each already reported as `path: reason`)."""
    return pipeline.run(argv, feature_modules())


def main(argv=None):
    return pipeline.main(argv, feature_modules())


if __name__ == "__main__":
    sys.exit(main())

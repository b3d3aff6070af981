"""Run ``python -m deepfake_toolkit ARGS`` with one more model registered whose weights are never
installed, as a separately downloaded model (BNext, ViT) is on a fresh machine.

tests/test_server.py starts a real server with it (``python tests/serve_with_extra_model.py
serve --port N``) to check how the server answers for a model without weights.
"""

from __future__ import annotations

import dataclasses
import os
import runpy
import sys

from deepfake_toolkit.cli import NO_TCMALLOC_ENV
from deepfake_toolkit.models import ModelSpec, WeightFile, get_spec, register_model

UNWEIGHTED_MODEL = "unweighted_test_model"
UNWEIGHTED_FILE = "unweighted_test_model.safetensors"
UNWEIGHTED_URL = "https://example.org/weights/unweighted_test_model.safetensors"


def unweighted_spec() -> ModelSpec:
    """The default model's architecture under another name, with a weight file nobody has."""
    return dataclasses.replace(
        get_spec("cnn"), name=UNWEIGHTED_MODEL,
        description="test model whose weights are not installed",
        weights=(WeightFile(filename=UNWEIGHTED_FILE, url=UNWEIGHTED_URL, license="test-only"),))


if __name__ == "__main__":
    register_model(unweighted_spec())
    # A re-exec to preload tcmalloc would start a fresh interpreter without the extra model.
    os.environ[NO_TCMALLOC_ENV] = "1"
    sys.argv = ["deepfake_toolkit", *sys.argv[1:]]
    runpy.run_module("deepfake_toolkit", run_name="__main__", alter_sys=True)

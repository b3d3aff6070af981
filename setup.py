"""Build hook: copy the project's notebooks and the default model's shipped files into the wheel
(as deepfake_toolkit/notebooks/*.ipynb and deepfake_toolkit/weights/), so that `deepfake-toolkit
classify`, `batch` and `notebooks` work from a plain pip install. Only the files the project ships
are copied, never other weight files a user keeps in weights/. Everything else is configured in
pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


SHIPPED_WEIGHTS = ("deepfake_toolkit_default.safetensors", "deepfake_toolkit_default.json",
                   "MODEL_CARD.md", "clip_probe.safetensors", "clip_fusion.safetensors",
                   "clip_pair.safetensors", "clip_transfer.json", "MODEL_CARD_CLIP.md")


class BuildWithData(build_py):
    """build_py that also copies the notebooks and the shipped weights into the built package."""

    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        package = Path(self.build_lib) / "deepfake_toolkit"
        (package / "notebooks").mkdir(parents=True, exist_ok=True)
        for notebook in sorted((root / "notebooks").glob("*.ipynb")):
            shutil.copyfile(notebook, package / "notebooks" / notebook.name)
        (package / "weights").mkdir(parents=True, exist_ok=True)
        for name in SHIPPED_WEIGHTS:
            shutil.copyfile(root / "weights" / name, package / "weights" / name)


setup(cmdclass={"build_py": BuildWithData})

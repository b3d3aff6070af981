"""Build hook: copy the project's notebooks into the wheel (as deepfake_toolkit/notebooks/*.ipynb),
so that `deepfake-toolkit batch` and `deepfake-toolkit notebooks` work from a plain pip install.
Everything else is configured in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithNotebooks(build_py):
    """build_py that also copies notebooks/*.ipynb into the built package."""

    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "notebooks"
        target = Path(self.build_lib) / "deepfake_toolkit" / "notebooks"
        target.mkdir(parents=True, exist_ok=True)
        for notebook in sorted(source.glob("*.ipynb")):
            shutil.copyfile(notebook, target / notebook.name)


setup(cmdclass={"build_py": BuildWithNotebooks})

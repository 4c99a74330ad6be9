"""What setup.cfg cannot say: the shipped checkpoints stay in the repository's top-level checkpoints/ and are
installed as the package data metatele/_shipped/<name>/model.safetensors (found by
`metatele.checkpoints.pretrained_dir`), so that `load_pretrained` works after a non-editable install."""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["metatele", "metatele.*"]), "metatele._shipped"],
      package_dir={"metatele._shipped": "checkpoints"},
      package_data={"metatele": ["py.typed", "configs/*.toml"], "metatele._shipped": ["*/model.safetensors"]})

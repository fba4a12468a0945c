"""The one compiled module (schemas/_event_reader.pyx: why in its docstring); everything else is in
pyproject.toml."""

from Cython.Build import cythonize
from setuptools import setup

setup(ext_modules=cythonize(["schemas/_event_reader.pyx"], quiet=True))

"""Packaging for scipion-em-cryoralign (Scipion 3 plugin ``cryoralign_plugin`` + standalone engine).

The version is read from ``cryoralign_plugin/__init__.py`` with a regex: importing the package here
would import pwem/pyworkflow before they are installed.
"""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.abspath(os.path.dirname(__file__))


def _read(*parts):
    with open(os.path.join(HERE, *parts), encoding="utf-8") as f:
        return f.read()


def _version():
    m = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", _read("cryoralign_plugin", "__init__.py"), re.M)
    if not m:
        raise RuntimeError("__version__ not found in cryoralign_plugin/__init__.py")
    return m.group(1)


def _requirements():
    reqs = []
    for line in _read("requirements.txt").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            reqs.append(line)
    return reqs


def _long_description():
    try:
        return _read("README.rst")
    except OSError:
        return ""


setup(
    name="scipion-em-cryoralign",
    version=_version(),
    description="Scipion 3 plugin for fast 2D alignment and classification by resampling to polar "
                "coordinates (Cryo-RALib style reference-free and multi-reference alignment)",
    long_description=_long_description(),
    long_description_content_type="text/x-rst",
    url="https://github.com/scipion-em/scipion-em-cryoralign",
    license="GPLv3",
    packages=find_packages(exclude=["benchmarks", "benchmarks.*"]),
    include_package_data=True,
    package_data={"cryoralign_plugin": ["protocols.conf", "*.png"],
                  "cryoralign_plugin.engine": ["data/*.mrcs", "data/*.star", "data/*.json", "data/README"]},
    python_requires=">=3.8",
    install_requires=_requirements(),
    extras_require={
        "gpu": ["numba-cuda"],
        # scipion-em-relion: its STAR importer (ProtImportParticles from RELION) feeds the CTF tests.
        "test": ["pytest", "pytest-timeout", "scipion-em-relion>=5"],
    },
    entry_points={
        "pyworkflow.plugin": ["cryoralign_plugin = cryoralign_plugin"],
        "console_scripts": ["cryoralign-engine = cryoralign_plugin.engine.cli:main"],
    },
    keywords="scipion cryoem imageprocessing scipion-3.0 2d-classification alignment",
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: GNU General Public License v3 (GPLv3)",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
    ],
    zip_safe=False,
)

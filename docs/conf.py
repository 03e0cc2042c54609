"""Sphinx configuration of the structops documentation.

Build with::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

# Document the checkout this file belongs to, installed or not.
sys.path.insert(0, os.path.abspath(".."))

import structops  # noqa: E402

project = "structops"
author = "structops developers"
copyright = "2026, structops developers"
release = structops.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]

templates_path = ["_templates"]
exclude_patterns = ["_build"]
root_doc = "index"

# API pages are generated from the docstrings into api/generated/ (not tracked).
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"show-inheritance": True}
autodoc_typehints = "none"  # numpydoc docstrings already state the types

# numpydoc: render the docstrings, do not validate them or list every member
# (the generated class pages list the members themselves).
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()
numpydoc_xref_param_type = False

nitpicky = False
pygments_style = "sphinx"

html_theme = "alabaster"
html_static_path = []
html_title = f"structops {release}"
html_theme_options = {
    "description": "Convolution layers as structured linear operators",
    "fixed_sidebar": True,
}

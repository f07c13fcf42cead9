"""Sphinx configuration of the API reference (docs/api/build.sh builds it).

The pages are generated from the docstrings of the names ``warpsocket``
exports; the prose documentation stays in docs/*.md.
"""

import os
import sys

# The repository root, so that the reference documents this checkout even
# when the package is not installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

project = "WarpSocket"
author = "The WarpSocket authors"
copyright = "The WarpSocket authors"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]

# ``name`` in a docstring is inline code, as in the Markdown docs.
default_role = "code"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False
# No network in CI: nothing is fetched, and unresolved cross-references to
# Twisted's types are not errors (no nitpicky mode).
html_theme = "alabaster"
html_static_path: list[str] = []
exclude_patterns = ["_build"]

"""pgha's version, named once: pyproject.toml reads it from here (setuptools
dynamic version), so an installed package, a source tree and the copy a
local cluster runs (harness.localcluster copies pgha/) all say the same."""

VERSION = "0.2.0"

# The suite imports the project's packages (pgha, harness) from the checkout's
# root: pyproject.toml sets pytest's pythonpath, and bin/test runs from there.

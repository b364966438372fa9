import os
import sys

# The suite imports the project's modules (pgha, logger) and its own helpers.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

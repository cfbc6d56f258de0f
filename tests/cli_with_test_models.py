"""Run the ``partclipseg`` CLI with extra registry entries (JSON list in ``PARTCLIPSEG_TEST_MODELS``).

Tests use it to run the real command in a separate process against models served on 127.0.0.1; the
entries only add names, every code path after the registry lookup is the installed one.
"""
import json
import os
import sys

from partclipseg.cli import main
from partclipseg.hub.registry import MODELS, ModelEntry

for fields in json.loads(os.environ.get("PARTCLIPSEG_TEST_MODELS", "[]")):
    MODELS[fields["name"]] = ModelEntry(**fields)

sys.exit(main(sys.argv[1:]))

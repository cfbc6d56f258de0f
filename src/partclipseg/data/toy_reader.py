"""The toy world's dataset reader (the generator lives in :mod:`partclipseg.data.toyworld`).

Kept apart from the generator so that ``partclipseg.data`` can register the reader without importing
the generator module, which ``python -m partclipseg.data.toyworld`` runs as ``__main__``.
"""
from __future__ import annotations

from .pascal_part import PascalPart116

NAME = "toy_world"
FOLDER_NAME = "ToyWorld"


class ToyWorld(PascalPart116):
    """Reader of the toy world (``toy_world``): the Pascal-Part-116 reader with the toy vocabulary."""

    name = NAME
    folder_name = FOLDER_NAME

    def _other_benchmark(self) -> str | None:
        return None

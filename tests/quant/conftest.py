"""Fixtures shared with the export tests (the Q4_0 export is judged the same way)."""

from tests.export.conftest import bpe  # noqa: F401

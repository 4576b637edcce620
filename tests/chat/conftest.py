"""The CLI tests' fixtures (a small text corpus and its prepared folder), shared here."""

from tests.cli.conftest import corpus_file, data_dir  # noqa: F401

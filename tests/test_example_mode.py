"""The example mode distribution of docs/custom-modes.md works: its own tests, run with the core's."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "agentrunner-review-mode"
sys.path[:0] = [str(EXAMPLE), str(EXAMPLE / "tests")]

from test_review_mode import (  # noqa: E402 — importable only once the example's folders are on the path
    test_its_yaml_section_is_validated_like_the_built_in_ones,
    test_the_mode_drafts_critiques_and_revises,
)

__all__ = ["test_its_yaml_section_is_validated_like_the_built_in_ones", "test_the_mode_drafts_critiques_and_revises"]

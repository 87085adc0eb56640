"""Let pytest rewrite the asserts of the case checks, so a failing check shows its values."""

import pytest

pytest.register_assert_rewrite("tests.programs.cases", "tests.programs.harness")

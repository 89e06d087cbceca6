"""The two README commands' set-up: extras and the environment reuse scripts/setup.sh relies on."""
import re
import tomllib

from helpers import ROOT


def _extras():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_the_test_extra_includes_the_demo_extra():
    """scripts/setup.sh reuses an environment installed with [test] for the demo without a second pip pass."""
    extras = _extras()
    assert set(extras["demo"]) <= set(extras["test"])
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert '[ "$EXTRAS" = "demo" ] && superset="$VENV/.lowbit-test-$hash"' in setup


def test_no_extra_asks_for_a_torch_that_would_replace_the_cpu_build():
    """A looser torch requirement in an extra would pull several GB of CUDA packages over the CPU wheel."""
    for name, deps in _extras().items():
        assert not any(re.match(r"torch\s*[<>=!~\[]", d) for d in deps), (name, deps)

"""Random config text, YAML trees and environment overrides into ``load_config``.

The invariant: ``load_config`` returns a ``Config`` or raises ``ConfigError``
(whose message names the source: the file, or a variable that is set); nothing
else escapes. And a ``Config`` it returns is one the hub can run with: every
number within its documented minimum (so never NaN), and ``Hub(config=...)``
starts. A number means the same in the file as in the environment.
"""

from __future__ import annotations

import math

import pytest
import yaml
from core.harness import fuzz_examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wshub_core import KEYS, Config, ConfigError, Hub, env_name, load_config
from wshub_core._config import Key

FUZZ = settings(max_examples=fuzz_examples(300), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

LEAVES = sorted({k.path.rsplit(".", 1)[-1] for k in KEYS})
SECTIONS = sorted({k.path.split(".")[0] for k in KEYS if "." in k.path})

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e-300, 2**63]),
    st.text(max_size=20),
    st.sampled_from([
        ":8080", "127.0.0.1:0", "[::1]:6379", "localhost", "redis://u:p@h:1/2", "rediss://h", "redis://[::1",
        "redis://h:1/\u00b2", "redis://h:99999", "redis://:p@/3", "http://h", "/ws", "ws", "", "text", "json",
        "1e3", "0x10", "-1", "10s", "1_000",
    ]),
)
TREES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(LEAVES + SECTIONS) | st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
DOCUMENTS = st.dictionaries(
    st.sampled_from(LEAVES + SECTIONS),
    TREES | st.dictionaries(st.sampled_from(LEAVES), SCALARS | st.lists(SCALARS, max_size=3), max_size=5),
    max_size=6,
)


@st.composite
def documented_keys(draw: st.DrawFn) -> dict[str, object]:
    """Real keys at their real places, with values of any type."""
    tree: dict[str, object] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=6, unique_by=lambda k: k.path)):
        node = tree
        *sections, leaf = key.path.split(".")
        for section in sections:
            node = node.setdefault(section, {})  # type: ignore[assignment]
        node[leaf] = draw(SCALARS | st.lists(SCALARS, max_size=3))
    return tree


def check(text: str | None, environ: dict[str, str] | None = None) -> None:
    try:
        config = load_config(text, source="fuzz.yaml", environ=environ)
        hub = Hub(config=config)  # may refuse too: auth.jwt.publicKey names a file no shell has read
    except ConfigError as exc:
        named = [f"environment variable {name}" for name in environ or {}]
        assert "fuzz.yaml" in str(exc) or any(n in str(exc) for n in named), exc
        assert isinstance(exc.json_logs, bool)
        return
    assert isinstance(config, Config)
    for key in KEYS:
        value = getattr(config, key.attr)
        if key.minimum is not None:
            assert not (isinstance(value, float) and math.isnan(value)), f"{key.path} is NaN"
            assert value >= key.minimum, (key.path, value)
    assert sorted(config.origins) == sorted(k.path for k in KEYS)
    hub.start(0.0)
    dials = hub.actions()
    assert bool(dials) is (config.broker == "redis"), dials  # the memory broker dials nothing


class TestConfigFuzz:
    @FUZZ
    @given(st.text(max_size=300))
    def test_random_text(self, text: str) -> None:
        check(text)

    @FUZZ
    @given(DOCUMENTS)
    def test_random_yaml_trees(self, tree: dict[str, object]) -> None:
        check(yaml.safe_dump(tree))

    @FUZZ
    @given(documented_keys())
    def test_documented_keys_with_any_values(self, tree: dict[str, object]) -> None:
        check(yaml.safe_dump(tree))

    @FUZZ
    @given(st.dictionaries(st.sampled_from([env_name(k.path) for k in KEYS]),
                           st.text(max_size=20) | st.sampled_from([".nan", ".inf", "-.inf", "1e400", "[1", "{a: 1}",
                                                                   "a,b", "~", "0o17", "redis://[::1",
                                                                   "=", "<<", "1e6", "2001-01-01"]),
                           max_size=4))
    def test_random_environment(self, environ: dict[str, str]) -> None:
        check(None, environ)

    @FUZZ
    @given(st.dictionaries(st.sampled_from([env_name(k.path) for k in KEYS]) | st.from_regex(r"\AWSHUB_[A-Z_]{0,12}\Z"),
                           st.sampled_from(["1", "", "json", "x:1"]), max_size=3),
           st.sampled_from([None, "logFormat: json\n", "clientKey: ''\n"]))
    def test_unknown_variables_and_a_file(self, environ: dict[str, str], text: str | None) -> None:
        check(text, environ)

    @FUZZ
    @given(st.sampled_from([k for k in KEYS if k.kind in ("int", "bytes", "seconds")]),
           st.from_regex(r"\A[-+]?[0-9._eEx:ob]{0,10}\Z"))
    def test_a_number_means_the_same_in_the_file_and_the_environment(self, key: Key, text: str) -> None:
        *sections, leaf = key.path.split(".")
        yaml_text = "".join(f"{'  ' * depth}{name}:\n" for depth, name in enumerate(sections))
        yaml_text += f"{'  ' * len(sections)}{leaf}: {text}\n"
        outcomes = []
        for args in ((yaml_text, {}), (None, {env_name(key.path): text})):
            try:
                outcomes.append(getattr(load_config(args[0], environ=args[1]), key.attr))
            except ConfigError:
                outcomes.append("error")
        assert outcomes[0] == outcomes[1], (yaml_text, outcomes)

    @pytest.mark.parametrize("opener", ["[", "{a: ", "- "])
    @pytest.mark.parametrize("depth", [10, 100, 1000, 3000])
    def test_deep_nesting(self, depth: int, opener: str) -> None:
        """A nesting bomb (a classic hostile input): a ConfigError, not a RecursionError."""
        check("address: " + opener * depth)

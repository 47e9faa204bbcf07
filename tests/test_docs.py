"""The docs stay true to the code: every key, env var, close code and metric is documented.

These tests read the code's own tables (``KEYS``, ``CloseCode``, ``Hub.metrics_text``)
and the Markdown files; they start nothing and need no Redis.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from wshub_core import KEYS, CloseCode, Hub, env_name, load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
PROTOCOL = ROOT / "docs" / "protocol.md"
OPERATIONS = ROOT / "docs" / "operations.md"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def leaf_paths(tree: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves of a YAML mapping (``webSocket.pongWait``)."""
    if not isinstance(tree, dict):
        return [prefix.rstrip(".")]
    out: list[str] = []
    for name, value in tree.items():
        out += leaf_paths(value, f"{prefix}{name}.")
    return out


class TestConfigurationDoc:
    @pytest.mark.parametrize("key", KEYS, ids=lambda k: k.path)
    def test_every_key_is_documented_with_its_env_name(self, key: Any) -> None:
        text = read(CONFIGURATION)
        assert f"`{key.path}`" in text, f"{key.path} is missing from docs/configuration.md"
        assert f"`{env_name(key.path)}`" in text, f"{env_name(key.path)} is missing from docs/configuration.md"

    def test_every_env_name_mentioned_anywhere_is_real(self) -> None:
        real = {env_name(k.path) for k in KEYS}
        files = [CONFIGURATION, PROTOCOL, OPERATIONS, ROOT / "README.md", ROOT / "Dockerfile",
                 ROOT / "docker-compose.yml", ROOT / "config.yaml"]
        for path in files:
            if not path.exists():
                continue
            for name in re.findall(r"\bWSHUB_[A-Z0-9_]*[A-Z0-9]\b", read(path)):
                assert name in real, f"{path.name} mentions {name}, which is not a config key's variable"

    def test_the_full_example_is_every_key_with_its_default(self) -> None:
        blocks = re.findall(r"```yaml\n(.*?)```", read(CONFIGURATION), flags=re.S)
        full = [b for b in blocks if all(k.path.rsplit(".", 1)[-1] + ":" in b for k in KEYS)]
        assert full, "docs/configuration.md has no YAML block listing every key"
        example = full[-1]
        assert sorted(leaf_paths(yaml.safe_load(example))) == sorted(k.path for k in KEYS)
        assert load_config(example, source="docs") == load_config(None, source="defaults")


class TestConfigYaml:
    def test_every_key_in_config_yaml_is_a_real_key(self) -> None:
        known = {k.path for k in KEYS}
        tree = yaml.safe_load(read(ROOT / "config.yaml"))
        for path in leaf_paths(tree):
            assert path in known, f"config.yaml sets {path}, which is not in KEYS"

    def test_config_yaml_loads(self) -> None:
        load_config(read(ROOT / "config.yaml"), source="config.yaml", environ={})


class TestProtocolDoc:
    @pytest.mark.parametrize("code", list(CloseCode), ids=lambda c: f"{c.value}-{c.name}")
    def test_every_close_code_is_documented(self, code: CloseCode) -> None:
        text = read(PROTOCOL)
        assert re.search(rf"^\| {code.value} \| `{code.name}` \|", text, flags=re.M), (
            f"close code {code.value} ({code.name}) has no row in docs/protocol.md's close-code table"
        )

    def test_every_http_status_the_hub_answers_is_documented(self) -> None:
        hub_source = read(ROOT / "wshub_core" / "_hub.py")
        statuses = set(re.findall(r"\bclient\.answer\((\d{3})\b", hub_source))
        assert statuses, "found no HTTP answer in wshub_core/_hub.py: update this test"
        # Statuses h11 hints at for a bad request head (_client.py's _HEADER_STATUS).
        header_table = re.findall(r"^_HEADER_STATUS = .*$", read(ROOT / "wshub_core" / "_client.py"), flags=re.M)
        statuses |= set(re.findall(r"\b(\d{3}):", "".join(header_table)))
        text = read(PROTOCOL)
        for status in sorted(statuses):
            assert re.search(rf"\| {status}\b", text), f"HTTP {status} is missing from docs/protocol.md"

    @pytest.mark.parametrize("channel", ["client-new", "groups-new:KEY", "group-data:GROUP", "client-data:KEY",
                                         "client-gone"])
    def test_every_channel_is_documented(self, channel: str) -> None:
        assert f"`ws-hub:{channel}`" in read(PROTOCOL)


class TestOperationsDoc:
    def test_every_metric_is_documented(self) -> None:
        hub = Hub(config=load_config(None, source="defaults"))
        names = re.findall(r"^# TYPE (\S+) ", hub.metrics_text(), flags=re.M)
        assert names, "Hub.metrics_text() exposes no metric"
        text = read(OPERATIONS)
        for name in names:
            assert re.search(rf"`{name}[`{{]", text), f"metric {name} is missing from docs/operations.md"

    def test_no_documented_metric_is_gone(self) -> None:
        hub = Hub(config=load_config(None, source="defaults"))
        names = set(re.findall(r"^# TYPE (\S+) ", hub.metrics_text(), flags=re.M))
        for name in re.findall(r"^\| `(wshub_[a-z_]+)", read(OPERATIONS), flags=re.M):
            assert name in names, f"docs/operations.md lists {name}, which Hub.metrics_text() does not expose"

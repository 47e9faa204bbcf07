"""The admin page (``GET /admin``) in a real browser, and ``GET /api/status`` over real HTTP, on both brokers.

The browser is a headless Chromium driven over its DevTools protocol
(``helpers.chromium_page``); the hub runs in this process. The page is opened
from the hub itself, so its fetch() calls are same-origin, as in production.

``ADMIN_SCREENSHOT=docs/admin.png`` makes the memory-broker run save its
screenshot there (docs/operations.md shows it); otherwise it goes to a
temporary directory, so a test run leaves the repository untouched.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
import websockets

from helpers import (
    TEST_API_KEY,
    ChromiumPage,
    HttpClient,
    RedisProcess,
    chromium_page,
    hub_config,
    needs_chromium,
    running_hub,
    wait_for,
    wait_until,
    within,
    ws_url,
)

BROKERS = ["memory", "redis"]


def config(broker: str, redis_server: RedisProcess, prefix: str) -> Any:
    cfg = hub_config(redis_server.port, prefix, broker=broker, api_key=TEST_API_KEY,
                     presence={"enabled": True, "grace": 0})
    assert cfg.broker == broker
    return cfg


async def text(page: ChromiumPage, element: str) -> str:
    return str(await page.evaluate(f"document.getElementById({json.dumps(element)}).innerText"))


async def until_text(page: ChromiumPage, element: str, want: Any, what: str) -> str:
    """Wait until ``want(innerText of element)`` holds; returns the text."""
    seen = ""

    async def check() -> bool:
        nonlocal seen
        seen = await text(page, element)
        return bool(want(seen))

    try:
        await wait_until(check, timeout=15, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; #{element} shows {seen!r}") from None
    return seen


async def submit(page: ChromiumPage, form: str, **values: str) -> None:
    """Fill a form's inputs (by id) and submit it as a user's click would."""
    script = "".join(f"document.getElementById({json.dumps(k)}).value = {json.dumps(v)};" for k, v in values.items())
    await page.evaluate(script + f"document.getElementById({json.dumps(form)}).requestSubmit(); true")


async def open_admin(port: int) -> Any:
    page_cm = chromium_page(f"http://127.0.0.1:{port}/admin")
    page = await page_cm.__aenter__()
    await page.call("Emulation.setDeviceMetricsOverride", width=1200, height=1060, deviceScaleFactor=1, mobile=False)
    await wait_until(lambda: _loaded(page), timeout=15, what="the admin page loaded")
    return page_cm, page


async def _loaded(page: ChromiumPage) -> bool:
    return bool(await page.evaluate("document.readyState === 'complete' && !!document.getElementById('login')"))


@needs_chromium
@pytest.mark.parametrize("broker", BROKERS)
def test_the_admin_page_shows_the_hub_and_acts_on_it(shell: str, broker: str, redis_server: RedisProcess, prefix: str,
                                                    tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(config(broker, redis_server, prefix), shell) as server:
            page_cm, page = await open_admin(server.port)
            try:
                await submit(page, "login", apikey=TEST_API_KEY)
                await wait_until(lambda: page.evaluate("!document.getElementById('dash').hidden"), timeout=15,
                                 what="the dashboard shown")
                assert await page.evaluate(f"sessionStorage.getItem('wshub-admin-key') === {TEST_API_KEY!r}")
                await until_text(page, "streamState", lambda t: t.startswith("event stream open"), "stream open")
                await until_text(page, "connections", lambda t: t == "0", "no connection yet")

                bob = await websockets.connect(ws_url(server.port, "bob"), proxy=None, compression=None)
                await until_text(page, "connections", lambda t: t == "1", "the connection counted")
                # client-new comes once the key's answer channel is subscribed: an answer now is heard
                await until_text(page, "events", lambda t: "client-new bob" in t, "client-new in the events")
                # and an API publish is refused (503) until every needed subscription is confirmed
                await wait_for(lambda: server.core.ready, what="bob's subscriptions confirmed")
                await submit(page, "setGroups", groupsKey="bob", groupsList="news, lobby")
                # the page's fetch() is answered later: alice's subscriptions must not make it a 503
                await until_text(page, "actionLog", lambda t: "PUT /api/keys/bob/groups -> 200" in t, "bob's groups")
                ws = await websockets.connect(ws_url(server.port, "alice"), proxy=None, compression=None)
                await until_text(page, "connections", lambda t: t == "2", "the second connection counted")
                await until_text(page, "events", lambda t: "client-new alice" in t, "client-new alice")
                await wait_for(lambda: server.core.ready, what="alice's subscriptions confirmed")

                await submit(page, "setGroups", groupsKey="alice", groupsList="news, room-7")
                alice = max(server.core._members)
                await wait_for(lambda: server.core.groups_of(alice) == {"news", "room-7"}, what="groups set")
                # the top groups: the most members first, then by name
                try:
                    await until_text(page, "groups", lambda t: t.split("\n") == ["news\t2", "lobby\t1", "room-7\t1"],
                                     "the top groups")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; actions: {await text(page, 'actionLog')!r}; events: "
                                         f"{await text(page, 'events')!r}; hub: {server.core.status()}") from None
                # presence: who is in news, on every hub; it follows the joins and leaves live
                await submit(page, "presenceForm", presenceGroup="news")
                await until_text(page, "presenceKeys", lambda t: t.split("\n") == ["alice\t1", "bob\t1"],
                                 "the presence of news")
                await until_text(page, "presenceState", lambda t: t.startswith("news: 2 key(s), 2 connection(s)"),
                                 "the presence summary")
                await submit(page, "publish", pubGroup="news", pubBody="hello from the page")
                assert await within(ws.recv()) == "hello from the page"
                await submit(page, "send", sendKey="alice", sendBody="just you")
                assert await within(ws.recv()) == "just you"

                await submit(page, "watch", watchKey="alice")
                sent = 0

                async def busy() -> bool:  # keep sending until the page shows a rate
                    nonlocal sent
                    for _ in range(5):
                        await ws.send(f"m{sent}")
                        sent += 1
                    return float(await text(page, "inRate")) > 0

                await wait_until(busy, timeout=15, what="a nonzero rate of messages in")
                last = f"m{sent - 1}"
                await until_text(page, "watchLog", lambda t: t.split("\n")[0].endswith(last), "alice's client-data")
                await until_text(page, "counters", lambda t: f"messages in\t{sent}" in t, "the counters")

                await submit(page, "kick", kickKey="alice", kickReason="bye from the admin page")
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        await within(ws.recv())
                assert (ws.close_code, ws.close_reason) == (4000, "bye from the admin page")
                closes = await until_text(page, "closes", lambda t: "4000" in t, "the close in the last closes")
                assert "sha256:" in closes and "bye from the admin page" in closes and "alice" not in closes
                await until_text(page, "connections", lambda t: t == "1", "alice's connection gone")
                await until_text(page, "presenceKeys", lambda t: t.split("\n") == ["bob\t1"], "alice left news")
                await until_text(page, "events", lambda t: "leave news alice" in t, "the leave event")
                await until_text(page, "actionLog", lambda t: t.count("-> 200") == 5, "five calls answered")

                # The key went in headers only: never in this page's URL or any URL it fetched.
                urls = await page.evaluate("[location.href, ...performance.getEntriesByType('resource')"
                                           ".map((e) => e.name)].join(' ')")
                assert TEST_API_KEY not in urls and "/api/status" in urls, urls

                shot = await page.call("Page.captureScreenshot", format="png")
                png = base64.b64decode(shot["result"]["data"])
                assert png.startswith(b"\x89PNG")
                target = os.environ.get("ADMIN_SCREENSHOT") if broker == "memory" else None
                Path(target or tmp_path / "admin.png").write_bytes(png)
                await bob.close()
            finally:
                await page_cm.__aexit__(None, None, None)

    asyncio.run(scenario())


@needs_chromium
def test_a_wrong_key_shows_the_401_and_no_data(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(config("memory", redis_server, prefix), shell) as server:
            ws = await websockets.connect(ws_url(server.port, "bob"), proxy=None, compression=None)
            page_cm, page = await open_admin(server.port)
            try:
                await submit(page, "login", apikey="not-the-key")
                auth = await until_text(page, "auth", lambda t: "401" in t, "the 401 shown")
                assert "wrong API key" in auth, auth
                assert await page.evaluate("document.getElementById('dash').hidden")
                assert await page.evaluate("sessionStorage.getItem('wshub-admin-key')") is None
                await asyncio.sleep(1.5)  # a poll that went on would fill the page: nothing may come
                assert await text(page, "connections") == "-"
                for table in ("counters", "groups", "closes", "events"):
                    assert await page.evaluate(f"document.getElementById('{table}').children.length") == 0
                assert server.core._api.calls == 0
                # With the right key the same page then works.
                await submit(page, "login", apikey=TEST_API_KEY)
                await until_text(page, "connections", lambda t: t == "1", "the connection counted")
            finally:
                await page_cm.__aexit__(None, None, None)
            await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("broker", BROKERS)
def test_api_status_over_http(shell: str, broker: str, redis_server: RedisProcess, prefix: str) -> None:
    """What ``curl -H 'Authorization: Bearer KEY' http://HUB/api/status`` gets."""

    async def scenario() -> None:
        async with running_hub(config(broker, redis_server, prefix), shell) as server:
            ws = await websockets.connect(ws_url(server.port, "carol"), proxy=None, compression=None)
            await wait_for(lambda: server.core.ready, what="carol's subscriptions confirmed")
            api = await HttpClient.open(server.port)
            status, headers, body = await api.request("GET", "/api/status")
            assert status == 200 and headers["content-type"] == "application/json", body
            s = json.loads(body)
            assert s["broker"]["kind"] == broker and s["broker"]["ready"] is True
            expected_links = {"subscriber": "ready", "commands": "ready"} if broker == "redis" else {}
            assert s["broker"]["links"] == expected_links
            assert s["connections"] == 1 and s["counters"]["connects"] == 1
            await ws.close()
            await wait_for(lambda: not server.core._members, what="carol gone")
            s = json.loads((await api.request("GET", "/api/status"))[2])
            assert [(c["code"], c["key"][:7]) for c in s["closes"]] == [(1000, "sha256:")]
            status, headers, body = await api.request("GET", "/api/status", key="wrong")
            assert status == 401 and set(json.loads(body)) == {"error"}
            assert (await api.request("POST", "/api/status", key=TEST_API_KEY))[0] == 405
            await api.close()
            page = await HttpClient.open(server.port)
            status, headers, body = await page.request("GET", "/admin", key=None)
            assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
            assert body.startswith(b"<!DOCTYPE html>")
            await page.close()

    asyncio.run(scenario())

"""The fake Discord itself enforces the limits the adapter must respect."""

from __future__ import annotations

import aiohttp

from tests.fakes.discord_api import FakeDiscord


async def test_fake_enforces_message_limits_and_json_content_type() -> None:
    fake = FakeDiscord()
    await fake.start()
    try:
        url = f"{fake.url}/api/v10/channels/{fake.channel_id}/messages"
        headers = {"Authorization": f"Bot {fake.valid_token}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"content": "x" * 2001}, headers=headers) as resp:
                assert resp.status == 400
                assert resp.headers["Content-Type"] == "application/json"
                assert (await resp.json())["code"] == 50035
            async with http.post(url, json={"content": ""}, headers=headers) as resp:
                assert (await resp.json())["code"] == 50006
            async with http.post(url, json={"content": "ok"}, headers=headers) as resp:
                assert resp.status == 200
                assert (await resp.json())["content"] == "ok"
            async with http.post(url, json={"content": "ok"}) as resp:
                assert resp.status == 401
            fake.inject("POST", r"/channels/\d+/messages", 429, retry_after=0.5)
            async with http.post(url, json={"content": "ok"}, headers=headers) as resp:
                assert resp.status == 429 and resp.headers["Via"]
                assert (await resp.json())["retry_after"] == 0.5
        assert len(fake.violations) == 2
        assert len(fake.find("POST", r"/channels/\d+/messages")) == 1
    finally:
        await fake.stop()

"""The console in a real browser: headless Chromium (Debian's ``/usr/bin/chromium``) driven by
Playwright, against the real server on the real services (fake model and fake trainer).

As a new admin would: log in, approve a correction, train and watch the run finish (the page
refreshes itself), compare two adapters (streamed), upload a document and read its result line,
test retrieval, roll back, set the canary share. With ``NIGHTOWL_SCREENSHOTS=DIR`` every page
is saved as a PNG there (``NIGHTOWL_SCREENSHOTS=docs/console`` makes the README's screenshots).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.console.server import Console
from tests.console.conftest import PASSWORD, Env
from tests.fakes.training_data import seed_chat

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("chromium") is None,
    reason="no /usr/bin/chromium: install it with `apt-get install -y chromium` (.ci/run does)")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright = pytest.importorskip("playwright.async_api",
                                     reason="the dev extra's playwright is not installed")
    async with playwright.async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


class Shots:
    def __init__(self, page: Any) -> None:
        target = os.environ.get("NIGHTOWL_SCREENSHOTS")
        self.dir = Path(target) if target else None
        self.page = page

    async def __call__(self, name: str) -> None:
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(self.dir / f"{name}.png"), full_page=True)


async def _seed(env: Env) -> None:
    await seed_chat(env.store, [("What does NightOwl do?", "It answers and learns nightly."),
                                ("And at night?", "It fine-tunes a LoRA adapter.")], user="ana")
    await seed_chat(env.store, [("Is the canary on?", "Maybe.")], user="rui", feedback=-1,
                    platform="discord")
    (aid,) = await seed_chat(env.store, [("How do I retrain the bot?", "I am not sure.")],
                             user="leo", feedback=None, platform="telegram")
    bea = await env.store.ensure_user("telegram", "bea", "Bea")
    await env.store.add_correction(aid, bea.id, "An admin sends /retrain; it trains tonight "
                                   "otherwise.", origin="suggestion")


async def test_a_new_admin_reviews_trains_compares_uploads_and_rolls_back(
        kb_env: Env, browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    env = kb_env
    await _seed(env)
    async with Console(env.core, env.cfg, port=0) as console:
        page = await browser.new_page(viewport={"width": 1280, "height": 860})
        shot = Shots(page)
        await page.goto(console.url)
        await expect(page.locator("h1")).to_have_text("Log in")
        await shot("login")
        await page.fill("input[name=name]", "admin")
        await page.fill("input[name=password]", "not it")
        await page.click("button[type=submit]")
        await expect(page.locator(".error")).to_have_text("Wrong name or password.")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await expect(page.locator("h1")).to_have_text("Overview")
        await shot("overview")

        await page.click("nav >> text=Conversations")
        await expect(page.locator("#conversations")).to_contain_text("ana")
        await shot("conversations")
        await page.click("#conversations >> text=What does NightOwl do?")
        await expect(page.locator("article.assistant").first).to_contain_text("adapter base")
        await shot("conversation")

        await page.click("nav >> text=Review queue")
        row = page.locator("#review-items tr", has_text="Bea")
        await shot("review")
        await row.locator("button", has_text="Approve").first.click()
        await expect(page.locator(".flash").first).to_contain_text("Approved c1")

        await page.click("nav >> text=Training runs")
        await page.click("#train-now")
        await expect(page.locator(".question")).to_contain_text("Start a training run now?")
        await page.click("text=Yes, do it")
        await expect(page.locator("#running")).to_be_visible()
        await env.trainer.started.wait()
        env.trainer.release.set()
        await expect(page.locator(".run .status.promoted")).to_be_visible(timeout=20_000)
        await expect(page.locator("svg.loss")).to_be_visible()
        await expect(page.locator("#active")).to_have_text("v0001")
        await shot("training")

        await page.click("nav >> text=Compare")
        await page.fill("textarea[name=prompt]", "How do I retrain the bot?")
        await page.uncheck("input[name=adapter][value=active]")
        await page.check("input[name=adapter][value=v0001]")
        await page.uncheck("input[name=retrieval][value=off]")
        await page.click("#compare-go")
        await expect(page.locator("#live")).to_have_attribute("data-done", "1")
        answers = page.locator("#live section.finished")
        await expect(answers).to_have_count(2)
        await expect(answers.nth(0)).to_contain_text("answered by base")
        await expect(answers.nth(1)).to_contain_text("answered by v0001")
        await shot("compare")

        await page.click("nav >> text=Knowledge")
        doc = tmp_path / "owl-guide.md"
        doc.write_text("# Night shifts\n\nThe owl trains its adapter every night at three.\n")
        await page.set_input_files("#files", str(doc))
        await page.click("#upload")
        await expect(page.locator(".flash").first).to_have_text(
            "added: owl-guide.md (1 chunks)")
        await page.fill("input[name=q]", "when does the owl train its adapter")
        await page.click(".search button")
        await expect(page.locator("#passages")).to_contain_text("owl-guide.md › Night shifts")
        await shot("knowledge")

        await page.click("nav >> text=Training runs")
        await page.select_option("#rollback-version", "base")
        await page.click("#rollback")
        await page.click("text=Yes, do it")
        await expect(page.locator(".flash").first).to_contain_text(
            "Active adapter is now the base model (was v0001)")
        await expect(page.locator("#active")).to_have_text("base")

        await page.select_option("#canary-version", "v0001")  # the rolled-back one, as canary
        await page.fill("#canary-share", "0.25")
        await page.click("#set-canary")
        await expect(page.locator(".question")).to_contain_text(
            "Let v0001 answer 25% of the chats for the active adapter (base)?")
        await page.click("text=Yes, do it")
        await expect(page.locator("#canary")).to_contain_text(
            "v0001 answers 25% of the chats for the active adapter (base)")
        await page.fill("#canary-share", "2")
        await page.click("#set-canary")  # refused before any confirmation
        await expect(page.locator(".flash").first).to_contain_text("Not changed: the canary "
                                                                    "share must be a number")

        await page.click("nav >> text=Probes & audit")
        await expect(page.locator("#audit")).to_contain_text("rollback")
        await shot("probes-audit")
    assert env.model.active_adapter is None
    assert env.model.canary.version == "v0001" and env.model.canary.share == 0.25
    assert env.trainer.calls == ["console"]

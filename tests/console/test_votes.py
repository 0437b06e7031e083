"""Blind A/B votes are preference data: a vote cast on the Compare page becomes, in training's
preference stage, a DPO pair / two KTO rows (chosen = the voted answer), counted in the report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from llm.base import ChatMessage
from tests.console.conftest import Env, storage
from training.dataset import DatasetReport
from training.preferences import preference_rows, read_votes


async def _vote(env: Env, prompt: str, choice: str) -> tuple[str, str]:
    """One blind trial of base against v0001 and a vote; (chosen text, rejected text)."""
    page = await (await env.client.post("/compare/blind", data=[
        ("csrf", await env.csrf("/compare")), ("prompt", prompt), ("adapter", "base"),
        ("adapter", "v0001"), ("retrieval", "on")])).text()
    trial_id = page.split('name="trial" value="')[1].split('"')[0]
    trial = env.state.trials.get(trial_id)
    assert trial is not None
    a, b = (r.text for r in trial.shown)
    voted = await env.post("/compare/vote", trial=trial_id, choice=choice)
    assert "Vote stored as a preference pair" in await voted.text()
    return (a, b) if choice == "A" else (b, a)


async def test_a_blind_vote_is_a_preference_pair_in_training(env: Env) -> None:
    model = env.model

    def by_adapter(messages: Sequence[ChatMessage]) -> str:
        return f"The answer of {model.calls[-1]['adapter'] or 'base'} to {messages[-1]['content']}"

    model.responder = by_adapter
    env.trainer.release.set()
    await env.login()
    await env.post("/training/train", confirm="yes")
    assert env.state.training is not None
    await env.state.training
    chosen, rejected = await _vote(env, "How do owls see at night?", "B")
    assert chosen != rejected and "How do owls see at night?" in chosen

    system = env.cfg.model.system_prompt
    (vote,) = read_votes(storage(env.cfg), system)
    assert (vote.chosen, vote.rejected) == (chosen, rejected)
    prompt = vote.prompt_messages()
    assert prompt[0] == {"role": "system", "content": system}  # as the model was asked
    assert prompt[-1] == {"role": "user", "content": "How do owls see at night?"}

    report = DatasetReport()
    pairs, skip = preference_rows("sft+dpo", [], [], votes=[vote], report=report)
    assert skip is None and pairs == [{"prompt": prompt,
                                       "chosen": [{"role": "assistant", "content": chosen}],
                                       "rejected": [{"role": "assistant", "content": rejected}]}]
    assert report.ab_votes == 1 and report.to_dict()["ab_votes"] == 1
    rows, skip = preference_rows("kto", [], [], votes=[vote])
    assert skip is None  # a vote alone gives both kinds KTO needs
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == \
        [(chosen, True), (rejected, False)]
    assert preference_rows("sft", [], [], votes=[vote], report=report) == ([], None)
    assert report.ab_votes == 0  # plain SFT reads no votes


async def test_votes_without_a_preference_or_with_personal_data_are_skipped(env: Env) -> None:
    path = storage(env.cfg) / "preferences" / "pairs.jsonl"
    path.parent.mkdir(parents=True)
    lines = [{"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."},
             {"prompt": "Mail?", "chosen": "Write to ana.lopes@example.com", "rejected": "No."},
             {"prompt": "", "chosen": "A", "rejected": "B"},
             {"prompt": "Old vote, no messages: ana.lopes@example.com?", "chosen": "Good.",
              "rejected": "Bad."}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    (vote,) = read_votes(storage(env.cfg), "SYS")
    assert (vote.chosen, vote.rejected) == ("Good.", "Bad.")
    assert vote.prompt[0] == ("system", "SYS")
    assert "ana.lopes@example.com" not in vote.prompt[1][1]  # the question is scrubbed


def test_the_nightly_split_reads_the_votes(tmp_path: Path) -> None:
    """The cycle's preference stage (``training.cycle._split``) takes the console's votes: a
    kto/dpo run trains on them with no rated answer at all, and the report counts them."""
    from bot.config import Config
    from data.config import StorageConfig
    from training import cycle

    path = tmp_path / "preferences" / "pairs.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"prompt": "How do owls see?", "chosen": "With large eyes.",
                                "rejected": "They do not."}) + "\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for method, expected in (("sft+dpo", 1), ("sft", 0)):
        cfg = Config().replace(storage=StorageConfig(dir=str(tmp_path)),
                               training__method=method)
        report = DatasetReport()
        _split, prefs, _skip = cycle._split(cfg, [], set(), report, [], run_dir)
        assert len(prefs) == expected and report.ab_votes == expected, (method, prefs)
        if expected:
            assert prefs[0]["chosen"] == [{"role": "assistant", "content": "With large eyes."}]
        data = json.loads((run_dir / "dataset.json").read_text())
        assert data["ab_votes"] == expected

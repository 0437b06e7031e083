"""The nightly learning loop: conversations -> dataset -> LoRA (child process) -> gate -> registry.

Entry points: ``training.cycle.run_cycle`` (one cycle), ``training.service.LearningService``
(what the running bot uses; implements ``bot.core.Learning``), ``training.scheduler.
NightlyScheduler`` (the cron job in ``nightowl run``) and ``training.cli`` (CLI commands).
Heavy libraries (torch, transformers, trl, peft) are imported lazily.
"""

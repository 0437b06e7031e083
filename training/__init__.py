"""The nightly learning loop: conversations -> dataset -> LoRA (child process) -> gate -> registry.

Entry points: ``training.cycle.run_cycle`` (one cycle), ``training.service.LearningService``
(what the running bot uses) and ``training.scheduler.NightlyScheduler`` (the cron job in
``nightowl run``). The modules, in the order a cycle uses them:

- ``dataset``, ``scrub``        logged conversations -> scrubbed SFT examples (JSONL)
- ``job``                       TrainJob / TrainResult: the typed parent -> child contract
- ``launch``                    starts the training child, relays its progress, reads its result
- ``sft``, ``sft_trainer``      the child: ``python -m training.sft JOB.json`` and its SFT recipe
- ``template``                  the chat template with generation markers (assistant-only loss)
- ``gate``, ``probes``          scoring candidate vs reference, the promotion rule, probes.json
- ``registry``                  adapter versions, meta.json, the atomic ACTIVE pointer
- ``forget``                    ``/forget`` for dataset files already on disk
- ``export``                    merged 16-bit weights and GGUF, verified

Heavy libraries (torch, transformers, trl, peft) are imported lazily, inside the functions.
"""

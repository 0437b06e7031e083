"""The training child: ``python -m training.sft JOB.json``.

A short entry point, like trl's ``scripts/sft.py``: it rebuilds the :class:`~training.job.TrainJob`
the parent wrote, hands it to the recipe of ``[training] method`` (SFT: ``training.sft_trainer``;
KTO, SFT then DPO: ``training.pref_trainer``), saves the ``default`` adapter to the
job's staging folder, scores candidate against reference (``training.gate.score_all``) and writes
a :class:`~training.job.TrainResult` to ``result.json``. Any failure exits non-zero without a
result; the parent then marks the run failed and promotes nothing.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from data.files import write_atomic
from training.job import TrainJob, TrainResult, progress


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = TrainJob.from_json(Path(argv[0]).read_text(encoding="utf-8"))
    import torch

    from training.gate import score_all
    from training.pref_trainer import train_dpo, train_kto
    from training.sft_trainer import load_model, replay_answers, train
    from training.template import training_template

    torch.set_num_threads(job.threads)
    torch.manual_seed(job.training.seed)
    started = time.perf_counter()
    progress(f"loading {job.model_path} ({job.threads} threads)")
    model, tokenizer, backend = load_model(job)
    template = training_template(tokenizer)
    method = job.training.method
    if method == "kto":
        stats = train_kto(job, model, tokenizer, template,
                          replay_answers(job, model, tokenizer, template))
    else:
        stats = train(job, model, tokenizer, template, backend)
        if method == "sft+dpo":
            stats = train_dpo(job, model, tokenizer, template, stats)
    model.set_adapter("default")
    model.save_pretrained(job.adapter_out, selected_adapters=["default"])
    scores = score_all(job, model, tokenizer, template)
    result = TrainResult(
        backend=backend, stats=stats, scores=scores,
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        duration_s=round(time.perf_counter() - started, 2), threads=job.threads,
        peak_cuda_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available() else None)
    write_atomic(job.result_file, result.to_json())
    progress(f"done in {result.duration_s} s ({stats.samples_per_s:.2f} samples/s, "
             f"peak RSS {result.peak_rss_mb} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

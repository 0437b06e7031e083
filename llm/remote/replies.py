"""What a server's error replies mean, as ModelError/AdapterError messages that say what to change.

Matched on the texts vLLM 0.32 sends (recorded against the real server; the unit tests replay
them): a dead engine (``EngineCore encountered an issue``, as a 500 or as an SSE ``error`` event
after a 200), a too-long prompt (400 ``maximum context length``), an unknown model name (404
``does not exist``) and the LoRA endpoint's refusals (404 ``Not Found`` = no runtime updating,
500 ``LoRA is not enabled``, 500 ``greater than max_lora_rank``, 404 ``No adapter found``, 400
``has already been loaded``). Anything else keeps the server's own text.
"""

from __future__ import annotations

import re

from llm.errors import AdapterError, ModelError

ENGINE_DEAD = "EngineCore encountered an issue"
TOO_LONG = "maximum context length"
NO_SUCH_MODEL = "does not exist"
ALREADY_LOADED = "has already been loaded"
NOT_FOUND_ON_UNLOAD = "cannot be found"
NO_LORA = "LoRA is not enabled"
RANK = re.compile(r"LoRA rank (\d+) is greater than max_lora_rank (\d+)")
NO_ADAPTER_FILES = "No adapter found"
CONTEXT = re.compile(r"maximum context length is (\d+) tokens")


def engine_dead(base_url: str, *, started: bool = False) -> ModelError:
    """The engine is gone: it crashed, or its server is stopping (a SIGTERM reaches the engine
    before the HTTP server, so a stopped server can say this mid-answer too)."""
    head = "stopped mid-answer (the answer is incomplete): " if started else ""
    return ModelError(
        f"{head}the vLLM engine at {base_url} died or was stopped (if nobody stopped it, its "
        "log has the cause: bash scripts/vllm.sh "
        "writes var/vllm/vllm.log); vLLM exits after this, so restart it (bash scripts/vllm.sh "
        "start). NightOwl reloads its adapters by itself once it answers again. On vLLM's CPU "
        "build a sampled request with a `seed` kills the engine; NightOwl never sends one.")


def down(base_url: str, detail: str, *, started: bool = False) -> ModelError:
    if started:
        return ModelError(f"the model server at {base_url} stopped mid-answer ({detail}); the "
                          "answer is incomplete. It may be restarting: try again in a minute.")
    return ModelError(f"cannot reach the model server at {base_url} ({detail}). Is the server "
                      "running? Start it (bash scripts/vllm.sh start for vLLM; or llama.cpp "
                      "server, Ollama) or fix [model] base_url.")


def refused(base_url: str, status: int, message: str, model: str) -> ModelError:
    """A chat request answered with 4xx/5xx before any text."""
    if ENGINE_DEAD in message:
        return engine_dead(base_url)
    if status == 400 and TOO_LONG in message:
        m = CONTEXT.search(message)
        window = m.group(1) if m else "the server's"
        return ModelError(f"the conversation is longer than the model server's context window "
                          f"({window} tokens): set [model] context_length = {window} (or lower) "
                          "so older history is dropped to fit, or start the server with a "
                          "larger --max-model-len.")
    if status == 404 and NO_SUCH_MODEL in message:
        return ModelError(f"the model server at {base_url} does not serve {model!r} "
                          f"({message}). Set [model] name to the served model name "
                          "(vLLM: --served-model-name).")
    return ModelError(f"the model server at {base_url} refused the request ({status}: "
                      f"{message}). Check [model] name ({model!r}) and api_key_env.")


def lora_refused(base_url: str, version: str, status: int, text: str, kept: str) -> AdapterError:
    """``POST /v1/load_lora_adapter`` answered ``status`` with body ``text``."""
    tail = f" Kept {kept}."
    if status in (404, 405) and NO_ADAPTER_FILES not in text:
        return AdapterError(
            f"the server at {base_url} cannot load LoRA adapters at runtime (no "
            "/v1/load_lora_adapter endpoint). vLLM has it when started with "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment (bash scripts/vllm.sh "
            "sets it) and --enable-lora; llama.cpp server and Ollama do not (merge the adapter "
            "into the model instead)." + tail)
    if NO_LORA in text:
        return AdapterError(f"vLLM at {base_url} was started without LoRA support: restart it "
                            "with --enable-lora --max-lora-rank 16 (bash scripts/vllm.sh start "
                            "does)." + tail)
    m = RANK.search(text)
    if m:
        return AdapterError(f"adapter {version} has LoRA rank {m.group(1)} but vLLM at "
                            f"{base_url} allows at most {m.group(2)}: restart vLLM with "
                            f"--max-lora-rank {m.group(1)} (or more), or train with [training] "
                            f"lora_r <= {m.group(2)}." + tail)
    if NO_ADAPTER_FILES in text:
        return AdapterError(f"vLLM at {base_url} cannot read the folder of adapter {version}: "
                            "the adapter path must be readable by the server at the same path "
                            "(same host, or the storage dir on shared storage)." + tail)
    if ENGINE_DEAD in text:
        return AdapterError(str(engine_dead(base_url)) + tail)
    return AdapterError(f"the server at {base_url} refused adapter {version} ({status}: "
                        f"{text[:300]})." + tail)

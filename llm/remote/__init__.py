"""Pieces of the ``openai`` backend that talk to the server beyond chat completions.

:mod:`llm.remote.replies` turns the exact error replies of vLLM (and of servers without its
endpoints) into ModelError/AdapterError messages that say what to change;
:mod:`llm.remote.adapters` keeps the runtime-loaded LoRA adapters of one server (versioned
names, in-flight pinning, unloading, reloading after a server restart, the base-model check).
"""

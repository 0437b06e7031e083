"""The pieces of ``nightowl serve-openai`` that keep it safe to expose (llm.openai_server).

* :mod:`llm.serve.guard`: who may talk to it (bind check, Host check, API key on every route,
  JSON bodies only) and the one error shape, which never carries a host path.
* :mod:`llm.serve.request`: what a chat request may ask for (every list and length capped).
* :mod:`llm.serve.adapters`: which adapters may be loaded (registry folders only, a label never
  re-pointed, a bounded number).
"""

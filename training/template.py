"""Training chat template: the stock ChatML text plus ``{% generation %}`` markers.

trl's ``assistant_only_loss`` needs the markers to build the assistant mask; SmolLM2's stock
template has none. :data:`CHATML_TEMPLATE` renders byte-identical text (including SmolLM2's
default system message when a conversation has none) and marks each assistant turn's content and its
``<|im_end|>`` as generated, so the model learns to stop. :func:`training_template` only uses it
after checking the rendered text equals the tokenizer's own template on sample conversations;
otherwise it falls back to trl's patched templates for known families, else refuses.
"""

from __future__ import annotations

from typing import Any

from training.errors import TrainingError

SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SMOL_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SAMPLE_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "system", "content": "You are a test."},
     {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "No system message here."},
     {"role": "assistant", "content": "Then a default one is used.\nTwo lines."}],
]


def _render(tokenizer: Any, messages: list[dict[str, str]], template: str | None,
            add_generation_prompt: bool = False) -> str:
    return str(tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt))


def renders_like_stock(tokenizer: Any, template: str) -> bool:
    """True if ``template`` renders every sample exactly like the tokenizer's own template."""
    for conv in SAMPLE_CONVERSATIONS:
        for gen in (False, True):
            msgs = conv if not gen else conv[:-1]
            if _render(tokenizer, msgs, template, gen) != _render(tokenizer, msgs, None, gen):
                return False
    return True


def training_template(tokenizer: Any) -> str:
    """The template to train with: stock if it has markers, our ChatML if identical, else trl's."""
    stock = tokenizer.chat_template
    if not stock:
        raise TrainingError("the model's tokenizer has no chat template; use an instruct model "
                            "([model] name) that ships one.")
    if isinstance(stock, str) and "{% generation %}" in stock.replace("{%-", "{%"):
        return stock
    if renders_like_stock(tokenizer, CHATML_TEMPLATE):
        return CHATML_TEMPLATE
    try:
        from trl.chat_template_utils import get_training_chat_template

        patched = get_training_chat_template(tokenizer)
    except Exception as exc:  # unknown family
        raise TrainingError(
            "the model's chat template has no {% generation %} markers and is not a known "
            "family, so assistant-only loss cannot be computed. Use a ChatML/Qwen/Llama-3 style "
            f"instruct model ({exc}).") from exc
    return patched or stock

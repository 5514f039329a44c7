"""How a prompt becomes model input. Every stage formats prompts here, so SFT, the reward model and PPO agree.

The bundled data writes a multi-turn prompt as ``"Human: ...\\n\\nAssistant: ...\\n\\nHuman: ..."`` with no
trailing ``Assistant:``; a single-turn prompt is the user's text alone. Both end with ``Assistant:`` after
formatting, and the response follows as ``" " + response`` and then the tokenizer's EOS token.
"""

from __future__ import annotations

DEFAULT_TEMPLATE = "Human: {prompt}\n\nAssistant:"
MULTI_TURN_PREFIX = "Human:"


def format_prompt(prompt: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The model input that precedes a response.

    A prompt that already starts with ``Human:`` is a conversation: it gets ``\\n\\nAssistant:`` appended.
    Any other prompt is put into ``template`` (which must contain ``{prompt}``).
    """
    if "{prompt}" not in template:
        raise ValueError(f"prompt template must contain '{{prompt}}': {template!r}")
    if prompt.lstrip().startswith(MULTI_TURN_PREFIX):
        return prompt.rstrip() + "\n\nAssistant:"
    return template.format(prompt=prompt.strip())


def format_response(response: str) -> str:
    """The response text as it follows the formatted prompt (the EOS token is appended as an id, not text)."""
    return " " + response.strip()

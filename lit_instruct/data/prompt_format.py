"""How a prompt becomes model input. Every stage formats prompts here, so SFT, the reward model and PPO agree.

The bundled data writes a multi-turn prompt as ``"Human: ...\\n\\nAssistant: ...\\n\\nHuman: ..."`` with no
trailing ``Assistant:``; a single-turn prompt is the user's text alone. Both end with ``Assistant:`` after
formatting, and the response follows as ``" " + response`` and then the tokenizer's EOS token.

:class:`PromptFormat` generalises this to tokenizers with a chat template (and to TRL-style message lists);
``format_prompt`` / ``format_response`` are its text-template case and stay as they are.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Sequence, Union

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


# --------------------------------------------------------------------------------------------------------------
# PromptFormat: one object per run that every stage (SFT, reward model, PPO, evaluation, sampling) uses.
# --------------------------------------------------------------------------------------------------------------

ChatTemplateMode = Union[Literal["auto", "always", "never"], bool]
Messages = List[Dict[str, str]]
PromptLike = Union[str, Sequence[Mapping[str, str]]]

ROLES = ("system", "user", "assistant")
# "\n\nHuman:" / "\n\nAssistant:" turn markers; the first turn's "Human:" may have no newlines before it, and stray
# whitespace around markers is tolerated (text is stripped).
_TURN_MARKER = re.compile(r"(?:\A\s*|[ \t]*\n[ \t]*\n\s*)(Human|Assistant):")
_MARKER_ROLE = {"Human": "user", "Assistant": "assistant"}
_SENTINEL = "LitInstructEndOfTurnProbe"


def parse_conversation(prompt: str) -> Messages:
    """Messages for a prompt string: a single user message, or the turns of a ``Human: ...`` conversation.

    ``"Human: a\\n\\nAssistant: b\\n\\nHuman: c"`` becomes user ``a``, assistant ``b``, user ``c``. Consecutive
    turns of the same role are merged (joined by a blank line) so the roles alternate; a trailing empty
    ``Assistant:`` (an already formatted prompt) is dropped. The conversation must end with a user turn.
    """
    if not prompt.lstrip().startswith(MULTI_TURN_PREFIX):
        return [{"role": "user", "content": prompt.strip()}]
    pieces = _TURN_MARKER.split(prompt.strip())
    messages: Messages = []
    for marker, content in zip(pieces[1::2], pieces[2::2]):
        role, content = _MARKER_ROLE[marker], content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = (messages[-1]["content"] + "\n\n" + content).strip()
        else:
            messages.append({"role": role, "content": content})
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    if not messages or messages[-1]["role"] != "user":
        raise ValueError(f"a multi-turn prompt must end with a Human turn: {prompt[-200:]!r}")
    return messages


def check_messages(messages: Sequence[Mapping[str, str]]) -> Messages:
    """``messages`` as a list of plain ``{"role", "content"}`` dicts; raises unless it is a valid prompt.

    Roles are ``system`` (only before the first user message), ``user`` and ``assistant``; the list must end
    with a user message (the model's response follows it).
    """
    out: Messages = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a mapping with 'role' and 'content': {m!r}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"message {i} content must be a string, got {type(content).__name__}")
        if role == "system" and any(o["role"] != "system" for o in out):
            raise ValueError(f"message {i}: a system message must come before the conversation")
        out.append({"role": role, "content": content})
    if not out or out[-1]["role"] != "user":
        raise ValueError("prompt messages must end with a user message")
    return out


def render_conversation(messages: Sequence[Mapping[str, str]], template: str = DEFAULT_TEMPLATE) -> str:
    """The text-template prompt for a message list (the inverse of :func:`parse_conversation`).

    One user message is ``format_prompt(content, template)``; more turns are written as
    ``"Human: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:"`` (as ``format_prompt`` does for such a
    string). System messages are prepended as plain text, each followed by a blank line.
    """
    messages = check_messages(messages)
    system = "".join(m["content"].strip() + "\n\n" for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return system + format_prompt(turns[0]["content"], template)
    names = {"user": "Human", "assistant": "Assistant"}
    convo = "\n\n".join(f"{names[m['role']]}: {m['content'].strip()}" for m in turns)
    return system + format_prompt(convo, template)


def _template_text(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one is used for plain chat
        template = template.get("default")
    return template or None


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def check_end_of_turn(tokenizer, chat_template: str | None = None, strict: bool = True) -> bool:
    """Whether the chat template closes an assistant turn with ``tokenizer.eos_token``.

    Training appends ``tokenizer.eos_token_id`` after the response and generation stops at it, so it must be
    the template's end-of-turn token (``<|im_end|>`` for Qwen2 instruct, ``<|eot_id|>`` for Llama-3 instruct);
    otherwise the model learns a different turn end than the template expects. Renders a one-turn conversation
    with an assistant message and looks at what follows the assistant text. On a mismatch raises
    ``ValueError`` when ``strict``, else warns; returns False. A tokenizer without chat template passes.
    """
    template = chat_template or _template_text(tokenizer)
    if template is None:
        return True
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
    rendered = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    eos = tokenizer.eos_token
    where = rendered.rfind(_SENTINEL)
    if where < 0:
        problem = "its chat template does not write the assistant message's text"
    else:
        after = rendered[where + len(_SENTINEL):]
        if eos and after.lstrip().startswith(eos):
            return True
        problem = (f"its chat template ends an assistant turn with {after[:40]!r}, not with eos_token {eos!r}; "
                   f"set the tokenizer's eos_token to the end-of-turn token")
    message = f"tokenizer {_tokenizer_name(tokenizer)!r}: {problem}"
    if strict:
        raise ValueError(message)
    warnings.warn(message, stacklevel=2)
    return False


@dataclass
class PromptFormat:
    """How prompts and responses become model text; build one with :meth:`from_tokenizer`.

    Two kinds:

    * ``chat_template``: the tokenizer's chat template. :meth:`prompt` is
      ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``, a prompt string is
      turned into messages by :func:`parse_conversation`, and :meth:`response` is the stripped text (the
      generation prompt ends where the assistant text starts). ``prompt_template`` is unused.
    * ``prompt_template``: the text template, exactly as :func:`format_prompt` / :func:`format_response`
      (``"Human: {prompt}\\n\\nAssistant:"`` and ``" " + response``). A message list is rendered by
      :func:`render_conversation` (system messages prepended as plain text).

    The caller tokenises the prompt and the response with ``add_special_tokens=False`` (a chat template
    writes the BOS text itself, e.g. Llama-3's ``<|begin_of_text|>``, so the tokenizer must not add another)
    and appends ``tokenizer.eos_token_id`` after the response. Under a chat template that EOS token must be
    the template's end-of-turn token (``<|im_end|>`` for Qwen2 instruct, ``<|eot_id|>`` for Llama-3 instruct);
    :meth:`check_end_of_turn` verifies it.

    :meth:`describe` identifies the format in every export's metadata and :meth:`check_same` compares two.
    """

    template: str = DEFAULT_TEMPLATE
    chat_template: str | None = None
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "{prompt}" not in self.template:
            raise ValueError(f"prompt template must contain '{{prompt}}': {self.template!r}")
        if self.chat_template is not None and self.tokenizer is None:
            raise ValueError("a chat-template PromptFormat needs the tokenizer that applies it")

    @classmethod
    def from_tokenizer(cls, tokenizer, prompt_template: str = DEFAULT_TEMPLATE,
                       chat_template: ChatTemplateMode = "auto") -> "PromptFormat":
        """The format for ``tokenizer``.

        ``chat_template``: ``"auto"`` uses the tokenizer's chat template when it has one (non-empty
        ``tokenizer.chat_template``), else ``prompt_template``; ``"always"`` (or ``True``) requires a chat
        template and raises ``ValueError`` naming the tokenizer when there is none; ``"never"`` (or ``False``)
        forces ``prompt_template`` even for a tokenizer with a chat template (e.g. to fine-tune an instruct
        model on the plain ``Human:``/``Assistant:`` format). Warns when the chat template's assistant turn
        does not end with ``tokenizer.eos_token`` (see :func:`check_end_of_turn`).
        """
        mode = ("always" if chat_template else "never") if isinstance(chat_template, bool) else chat_template
        if mode not in ("auto", "always", "never"):
            raise ValueError(f"chat_template must be 'auto', 'always', 'never' or a bool, got {chat_template!r}")
        template = _template_text(tokenizer)
        if mode == "always" and template is None:
            raise ValueError(f"chat_template='always' but tokenizer {_tokenizer_name(tokenizer)!r} has no chat template")
        if mode == "never" or template is None:
            return cls(template=prompt_template)
        check_end_of_turn(tokenizer, template, strict=False)
        return cls(template=prompt_template, chat_template=template, tokenizer=tokenizer)

    @classmethod
    def from_description(cls, description: Mapping[str, Any] | None, tokenizer=None) -> "PromptFormat":
        """The format an export's :meth:`describe` recorded (``None`` or ``{}``: the default text template).

        A chat-template description takes the template from ``tokenizer`` and raises ``ValueError`` when
        the tokenizer has none or its template's hash differs.
        """
        d = normalize_description(description)
        if d["kind"] == "prompt_template":
            return cls(template=d["template"])
        template = _template_text(tokenizer) if tokenizer is not None else None
        if template is None or _sha256(template) != d["sha256"]:
            raise ValueError(f"the description names chat template sha256 {d['sha256']}, but tokenizer "
                             f"{_tokenizer_name(tokenizer) if tokenizer is not None else None!r} has "
                             f"{'no chat template' if template is None else 'sha256 ' + _sha256(template)}")
        return cls(chat_template=template, tokenizer=tokenizer)

    @property
    def uses_chat_template(self) -> bool:
        return self.chat_template is not None

    def messages(self, prompt: PromptLike) -> Messages:
        """``prompt`` as a checked message list (a string is parsed by :func:`parse_conversation`)."""
        return parse_conversation(prompt) if isinstance(prompt, str) else check_messages(prompt)

    def prompt(self, prompt: PromptLike) -> str:
        """The model input that precedes a response.

        ``prompt`` is a string (single-turn, or the ``Human: ...\\n\\nAssistant: ...\\n\\nHuman: ...`` form) or
        a list of ``{"role", "content"}`` messages ending with a user message.
        """
        if self.chat_template is not None:
            return self.tokenizer.apply_chat_template(self.messages(prompt), chat_template=self.chat_template,
                                                      tokenize=False, add_generation_prompt=True)
        if isinstance(prompt, str):
            return format_prompt(prompt, self.template)
        return render_conversation(prompt, self.template)

    def response(self, text: str) -> str:
        """The response text as it follows :meth:`prompt` (the caller appends ``tokenizer.eos_token_id``)."""
        return text.strip() if self.chat_template is not None else format_response(text)

    def check_end_of_turn(self, strict: bool = True) -> bool:
        """:func:`check_end_of_turn` for this format's tokenizer (always True for the text template)."""
        if self.chat_template is None:
            return True
        return check_end_of_turn(self.tokenizer, self.chat_template, strict=strict)

    def describe(self) -> dict:
        """What identifies this format in an export's metadata."""
        if self.chat_template is not None:
            return {"kind": "chat_template", "sha256": _sha256(self.chat_template)}
        return {"kind": "prompt_template", "template": self.template}

    @staticmethod
    def check_same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, what_a: str, what_b: str) -> None:
        """Raise ``ValueError`` naming ``what_a`` and ``what_b`` when descriptions ``a`` and ``b`` differ.

        ``None`` or ``{}`` (an export from before formats were recorded) means the default text template.
        """
        da, db = normalize_description(a), normalize_description(b)
        if da != db:
            raise ValueError(f"{what_a} and {what_b} format prompts differently: {what_a} uses "
                             f"{_summary(da)}, {what_b} uses {_summary(db)}; train and evaluate them with the same "
                             f"tokenizer chat template / prompt_template")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_description(description: Mapping[str, Any] | None) -> dict:
    """A :meth:`PromptFormat.describe` dict with only its identifying keys; ``None``/``{}`` is the default."""
    if not description:
        return {"kind": "prompt_template", "template": DEFAULT_TEMPLATE}
    kind = description.get("kind")
    if kind == "chat_template":
        return {"kind": kind, "sha256": description["sha256"]}
    if kind == "prompt_template":
        return {"kind": kind, "template": description.get("template", DEFAULT_TEMPLATE)}
    raise ValueError(f"unknown prompt format description: {dict(description)!r}")


def _summary(d: Mapping[str, Any]) -> str:
    if d["kind"] == "chat_template":
        return f"a chat template (sha256 {d['sha256'][:12]})"
    return f"the text template {d['template']!r}"


def check_prompt_field(row: dict, name: str = "prompt") -> str | None:
    """The problem with ``row[name]`` as a prompt (a non-blank string, or a list of ``{"role", "content"}``
    messages ending with a user turn), or ``None``."""
    if name not in row:
        return f"missing field {name!r}"
    value = row[name]
    if isinstance(value, str):
        return None if value.strip() else f"field {name!r} is empty"
    if isinstance(value, list):
        try:
            check_messages(value)
        except ValueError as e:
            return f"field {name!r}: {e}"
        return None
    return f"field {name!r} must be a string or a list of messages, got {type(value).__name__}"


def encode_pair(tokenizer, prompt_ids: list[int], completion: str, max_length: int, fmt: PromptFormat | None = None,
                eos: bool = True) -> tuple[list[int], bool]:
    """``prompt + response(completion) + EOS`` as ids, cut at ``max_length`` (the flag says whether it was cut);
    ``eos=False``: no EOS, for a sampled response that never ended (scored as PPO's rollout scores it)."""
    text = fmt.response(completion) if fmt is not None else format_response(completion)
    ids = prompt_ids + tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
    return ids[:max_length], len(ids) > max_length


def prompt_key(prompt: "str | list") -> str:
    """A string key of a prompt (for deterministic splits and logs): the text, or the messages' JSON."""
    import json

    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)

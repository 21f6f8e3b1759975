"""From a wire request to a :class:`GenerationRequest`: the checks that need the chosen model.

Parameters a provider cannot honour are refused with a 400 naming them, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from chatbot_api.errors import InvalidRequestError, UnsupportedParameterError
from chatbot_api.providers.base import GenerationRequest, PromptMessage, PromptToolCall
from chatbot_api.schemas.chat import ChatCompletionRequest
from chatbot_api.schemas.messages import (
    AssistantMessage,
    ChatMessage,
    MediaPart,
    ToolMessage,
    message_text,
)

__all__ = [
    "build_generation_request",
    "check_supported",
    "check_tool_turns",
    "requested_parameters",
]


def requested_parameters(request: ChatCompletionRequest) -> list[str]:
    """The optional parameters this request actually asks for, in the spec's names."""
    asked: list[str] = []
    if request.tools:
        asked.append("tools")
    if request.tool_choice is not None and request.tool_choice != "none":
        asked.append("tool_choice")
    if request.functions:
        asked.append("functions")
    if request.function_call is not None and request.function_call != "none":
        asked.append("function_call")
    if request.response_format and request.response_format.get("type", "text") != "text":
        asked.append("response_format")
    if request.logprobs:
        asked.append("logprobs")
    if request.top_logprobs:
        asked.append("top_logprobs")
    if request.logit_bias:
        asked.append("logit_bias")
    if request.audio is not None or (request.modalities and "audio" in request.modalities):
        asked.append("audio")
    for name in ("prediction", "web_search_options", "reasoning_effort", "verbosity"):
        if getattr(request, name) is not None:
            asked.append(name)
    return asked


def check_supported(
    request: ChatCompletionRequest, model_id: str, supported: frozenset[str]
) -> None:
    if request.tool_choice not in (None, "none") and not request.tools:
        raise InvalidRequestError(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            param="tool_choice",
            code="invalid_value",
        )
    if request.top_logprobs and not request.logprobs:
        raise InvalidRequestError(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
            "'top_logprobs' is used.",
            param="top_logprobs",
            code="invalid_value",
        )
    for name in requested_parameters(request):
        if name not in supported:
            raise UnsupportedParameterError(
                f"Unsupported parameter: '{name}' is not supported with model '{model_id}'.",
                param=name,
            )
    for i, message in enumerate(request.messages):
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, MediaPart) and part.type not in supported:
                raise UnsupportedParameterError(
                    f"Unsupported content: model '{model_id}' cannot read content parts of "
                    f"type '{part.type}'.",
                    param=f"messages[{i}].content[{j}]",
                )


#: How many unanswered calls an error lists by id: a request may leave thousands.
_LISTED_IDS = 20


def check_tool_turns(messages: Sequence[ChatMessage]) -> None:
    """OpenAI's rule for a conversation with tool calls: each ``tool`` message answers a call
    of the assistant message just before it (or of the results' run that follows it), once,
    and no other message comes before every call has its answer."""
    asked: dict[str, None] | None = None  # the calls the current run of results may answer
    answered: dict[str, int] = {}  # ...and the message that answered each
    opened = 0  # the assistant message that made them
    for i, message in enumerate(messages):
        if isinstance(message, ToolMessage):
            call_id = message.tool_call_id
            if asked is None:
                raise InvalidRequestError(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceding message with 'tool_calls'.",
                    param=f"messages[{i}].role",
                    code="invalid_value",
                )
            if call_id not in asked:
                raise InvalidRequestError(
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message.",
                    param=f"messages[{i}].tool_call_id",
                    code="invalid_value",
                )
            if call_id in answered:
                raise InvalidRequestError(
                    f"Invalid parameter: Duplicate value for 'tool_call_id' of '{call_id}' in "
                    f"messages[{answered[call_id]}] and messages[{i}].",
                    param=f"messages[{i}].tool_call_id",
                    code="invalid_value",
                )
            answered[call_id] = i
            continue
        if asked is not None and len(answered) < len(asked):
            break
        asked, answered = None, {}
        if isinstance(message, AssistantMessage) and message.tool_calls:
            asked, opened = dict.fromkeys(call.id for call in message.tool_calls), i
    if asked is not None and len(answered) < len(asked):
        missing = [call_id for call_id in asked if call_id not in answered]
        listed = ", ".join(missing[:_LISTED_IDS])
        if len(missing) > _LISTED_IDS:
            listed += f" and {len(missing) - _LISTED_IDS} more"
        raise InvalidRequestError(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {listed}",
            param=f"messages[{opened}].role",
            code="invalid_value",
        )


def build_generation_request(
    request: ChatCompletionRequest, *, seed_offset: int = 0, request_id: str | None = None
) -> GenerationRequest:
    messages = tuple(_prompt_message(m) for m in request.messages)
    seed = None if request.seed is None else request.seed + seed_offset
    return GenerationRequest(
        request=request,
        messages=messages,
        max_tokens=request.completion_limit,
        stop=request.stop_sequences,
        seed=seed,
        request_id=request_id,
    )


def _prompt_message(message: ChatMessage) -> PromptMessage:
    text = message_text(message.content)
    if isinstance(message, ToolMessage):
        return PromptMessage(message.role, text, tool_call_id=message.tool_call_id)
    if not isinstance(message, AssistantMessage):
        return PromptMessage(message.role, text)
    calls = [
        PromptToolCall(call.id, call.function.name, call.function.arguments)
        for call in message.tool_calls or ()
    ]
    if message.function_call is not None:
        name, arguments = message.function_call.name, message.function_call.arguments
        calls.append(PromptToolCall("", name, arguments))
    return PromptMessage(message.role, text, tuple(calls))

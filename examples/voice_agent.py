"""A LiveKit Agents voice worker whose LLM is chatbot-api.

``POST /v1/voice/sessions`` makes a LiveKit room and dispatches this worker into it with the
model and instructions the caller chose; the worker answers in the room, thinking through this
server's OpenAI-compatible ``/v1`` (``livekit-plugins-openai``'s ``LLM`` pointed at it).

Run it (``pip install 'chatbot-api[voice]'``, or ``make install`` in a clone)::

    export LIVEKIT_URL=wss://your-project.livekit.cloud  # or your own LiveKit server
    export LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    export CHATBOT_API_URL=http://127.0.0.1:8000/v1 CHATBOT_API_KEY=sk-...  # a key of ours
    python -m livekit.agents start examples/voice_agent.py

Speech to text, text to speech and voice activity detection are yours to choose (a cloud
service or a local model, each a LiveKit plugin): add them in :func:`speech`. Without them
the agent answers the room's text chat only.
"""

from __future__ import annotations

import json
import os
from typing import Any

from livekit.agents import Agent, AgentServer, AgentSession, JobContext
from livekit.plugins import openai

#: Must match the server's CHATBOT_LIVEKIT_AGENT_NAME, which names this worker in dispatches.
AGENT_NAME = os.environ.get("CHATBOT_LIVEKIT_AGENT_NAME", "chatbot-voice")
DEFAULT_INSTRUCTIONS = "You are a helpful voice assistant. Answer in short, spoken sentences."


def _brief(metadata: str) -> dict[str, Any]:
    """What the session's dispatch carries: ``{"model", "instructions", ...}``."""
    try:
        brief = json.loads(metadata or "{}")
    except ValueError:
        return {}
    return brief if isinstance(brief, dict) else {}


def agent_llm(metadata: str) -> openai.LLM:
    """The agent's LLM: this server's ``/v1``, with the model the session asked for."""
    model = _brief(metadata).get("model") or os.environ.get("CHATBOT_MODEL", "gemma-3-270m")
    return openai.LLM(
        model=model,
        base_url=os.environ.get("CHATBOT_API_URL", "http://127.0.0.1:8000/v1"),
        api_key=os.environ["CHATBOT_API_KEY"],
    )


def instructions_of(metadata: str) -> str:
    return _brief(metadata).get("instructions") or DEFAULT_INSTRUCTIONS


def speech() -> dict[str, Any]:
    """Your speech plugins, for example ``{"stt": deepgram.STT(), "tts": cartesia.TTS(),
    "vad": silero.VAD.load()}`` (``livekit-plugins-deepgram``, ``-cartesia``, ``-silero``)."""
    return {}


server = AgentServer()


@server.rtc_session(agent_name=AGENT_NAME)
async def entrypoint(ctx: JobContext) -> None:
    # An explicit dispatch carries the brief in the job; a worker on automatic dispatch
    # finds it in the room's metadata, which the server sets too.
    metadata = ctx.job.metadata or ctx.job.room.metadata
    session = AgentSession(llm=agent_llm(metadata), **speech())
    await session.start(room=ctx.room, agent=Agent(instructions=instructions_of(metadata)))

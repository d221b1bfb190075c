"""The ``generate`` contract every model server here keeps, typed once, and the request it carries.

The agent loop awaits ``server_manager.generate`` (verl's ``LLMServerClient.generate``); in training that is
verl's client, outside it one of the servers of this package. :class:`GenerateServer` states what the loop
relies on. :class:`ImageServer` implements its signature once for our image-only servers: they write
:meth:`ImageServer.serve` against a read :class:`ImageRequest` instead of copying verl's keyword list.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from verl.workers.rollout.replica import TokenOutput


@runtime_checkable
class GenerateServer(Protocol):
    """What the agent loop calls once per assistant turn; the signature of verl's ``LLMServerClient.generate``.

    ``prompt_ids`` carry one expanded ``<|image_pad|>`` run per image of ``image_data``, in order; the
    response's ``token_ids`` include the stop token, ``stop_reason`` is ``"completed"`` whether the turn hit
    its end or ``max_tokens``, and ``extra_fields`` travel into the sample's fields (weights versions).
    ``priority`` (verl's loops pass it with every request) may be ignored by a server that queues nothing.
    """

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> TokenOutput: ...


@dataclass(frozen=True)
class ImageRequest:
    """One :meth:`GenerateServer.generate` call of an image-only server, read once."""

    request_id: str
    prompt_ids: list[int]
    sampling_params: dict[str, Any]
    images: list[Any] = field(default_factory=list)
    mm_processor_kwargs: dict[str, Any] | None = None
    priority: int = 0

    @classmethod
    def read(cls, request_id: str, call: Mapping[str, Any], server: str) -> ImageRequest:
        """The keyword arguments of a ``generate`` call; video or audio data raise (``server`` names who refuses)."""
        if call.get("video_data") or call.get("audio_data"):
            raise NotImplementedError(f"{server} serves images only; send video frames as images")
        return cls(
            request_id=request_id,
            prompt_ids=list(call["prompt_ids"]),
            sampling_params=dict(call["sampling_params"]),
            images=list(call.get("image_data") or []),
            mm_processor_kwargs=call.get("mm_processor_kwargs"),
            priority=int(call.get("priority") or 0),
        )


class ImageServer(abc.ABC):
    """A :class:`GenerateServer` for images only: ``generate`` reads the call, :meth:`serve` answers it."""

    async def generate(self, request_id: str, **call: Any) -> TokenOutput:
        """:meth:`GenerateServer.generate` (same keywords); video or audio data raise ``NotImplementedError``."""
        return await self.serve(ImageRequest.read(request_id, call, type(self).__name__))

    @abc.abstractmethod
    async def serve(self, request: ImageRequest) -> TokenOutput:
        """Answer one request."""

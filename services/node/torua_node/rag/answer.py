"""`torua.rag.answer`: rag.retrieve's context, then an OpenAI-compatible chat model, citing chunk ids.

The model is asked to cite passages as `[chunk id]`; citations are read back from its answer and
kept only when they name a chunk that was in the context, so a hallucinated id never reaches the
caller. Without TORUA_LLM_URL the endpoint answers 503 naming that setting; a model that fails
(errors, timeouts, malformed replies, after retries) gives a 503 that says what went wrong.
"""

from __future__ import annotations

import re

from torua.errors import Unavailable
from torua.llm import LLMSettings, OpenAICompatible, OpenAIConfig
from torua.model import AnswerReply, AnswerRequest, RetrieveRequest
from torua_node.rag.retrieve import Retriever

__all__ = ["Answerer", "AnswerRequest", "build_messages", "cited"]

NOT_CONFIGURED = (
    "rag.answer needs an LLM: set TORUA_LLM_URL on the nodes to an OpenAI-compatible API "
    "(e.g. http://localhost:11434/v1 for Ollama) and TORUA_LLM_MODEL to a model it serves"
)
NOTHING_FOUND = "Nothing stored in Torua relates to this question, so there is nothing to answer from."

_SYSTEM = (
    "You answer questions using only the passages and relations given as context. Each passage starts "
    "with its id in square brackets. After every statement, cite the ids of the passages that support "
    "it in square brackets, exactly as written, for example [doc:1a2b#0]. If the context does not "
    "contain the answer, say that you do not know. Be brief."
)
_BRACKETS = re.compile(r"\[([^\[\]\n]{1,1024})\]")


def build_messages(question: str, context: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"},
    ]


def cited(answer: str, allowed: list[str]) -> list[str]:
    """Chunk ids the answer cites in brackets ("[a]", "[a, b]"), in order, only those in `allowed`."""
    known = set(allowed)
    out: list[str] = []
    for group in _BRACKETS.findall(answer):
        for part in re.split(r"[,;]", group):
            cid = part.strip().strip("`'\"")
            if cid in known and cid not in out:
                out.append(cid)
    return out


class Answerer:
    def __init__(self, retriever: Retriever, settings: LLMSettings) -> None:
        self.retriever = retriever
        self.settings = settings
        self.api = OpenAICompatible(OpenAIConfig.from_llm_settings(self.settings)) if self.settings.llm_url else None

    async def answer(self, req: AnswerRequest) -> AnswerReply:
        if self.api is None:
            raise Unavailable(NOT_CONFIGURED)
        retrieved = await self.retriever.retrieve(
            RetrieveRequest(
                question=req.question,
                k=req.k,
                hops=req.hops,
                token_budget=req.token_budget,
                after=req.after,
                consistency=req.consistency,
            )
        )
        model = self.settings.llm_model
        if not retrieved.context.strip():
            return AnswerReply(answer=NOTHING_FOUND, citations=[], context="", model=model, partial=retrieved.partial)
        text = await self.api.chat(build_messages(req.question, retrieved.context))
        in_context = [c.id for c in retrieved.chunks if f"[{c.id}]" in retrieved.context]
        return AnswerReply(
            answer=text.strip(),
            citations=cited(text, in_context),
            context=retrieved.context,
            chunks=retrieved.chunks,
            model=model,
            partial=retrieved.partial,
        )

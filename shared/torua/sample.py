"""`torua up --sample DIR`: the first minute — load a sample corpus, then show one retrieval."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torua.client import Client
from torua.connect import NatsAuth
from torua.display import retrieve_text
from torua.ingest import Progress, ingest_paths

__all__ = ["sample_demo"]


def _sample_questions(path: Path) -> list[str]:
    try:
        data = json.loads((path / "questions.json").read_text())
        return [str(q["question"]) for q in data["questions"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


async def sample_demo(url: str, path: Path, auth: NatsAuth | None = None) -> None:
    """Load a sample corpus with the ingest pipeline, then show one multi-hop retrieval."""
    print(f"\nloading the sample corpus from {path}/ ...", flush=True)
    questions = _sample_questions(path) or ["Who taught the founder of the Lantern Guild?"]
    async with await Client.connect(url, auth=auth) as client:
        stats = await ingest_paths(client, [path], progress=Progress(sys.stderr))
        print(stats.summary(), flush=True)
        reply = await client.retrieve(questions[0], k=3, after=stats.tokens)
    print(f'\nOne multi-hop retrieval over it (torua retrieve "{questions[0]}" -k 3):\n')
    print(retrieve_text(reply, questions[0]))
    print("\nAsk your own:")
    for q in questions[1:3]:
        print(f'  NATS_URL={url} torua retrieve "{q}"')
    print(f"  NATS_URL={url} torua search Tidelamp --target entities", flush=True)

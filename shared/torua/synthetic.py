"""A generated multi-hop corpus with questions whose supporting chunks sit in different documents.

Everything is invented (names from syllables), so no model or search engine has seen it, and each
fact is stated once, in its own document: answering a 2- or 3-hop question needs the chunk of every
hop, and the last hop's chunk shares almost no words with the question. Distractor chunks reuse
the question vocabulary and the same entities in unrelated facts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from torua.model import Chunk, Document, Entity, Relation

__all__ = ["Question", "Corpus", "multihop_corpus"]

_SYLLABLES = ["ka", "lo", "ri", "ve", "zan", "tor", "mi", "sel", "dru", "qua", "bex", "nor", "fen", "ilo", "pra", "vos", "tem", "yul", "gri", "osh"]

# relation type -> (sentence, source type, target type)
_FACTS = {
    "FOUNDED": ("{s} founded {t} in a rented workshop.", "person", "company"),
    "HEADQUARTERED_IN": ("{s} runs its main offices out of {t}.", "company", "city"),
    "MAKES": ("The flagship product of {s} is the {t}.", "company", "product"),
    "STUDIED_AT": ("{s} earned a degree from {t}.", "person", "university"),
    "BORN_IN": ("{s} grew up in {t}.", "person", "city"),
    "WORKS_FOR": ("{s} is employed by {t}.", "person", "company"),
}

_NOISE = [
    "The city council of {c} debated where the company should build its new offices.",
    "Many people asked which city the founder of the company would choose.",
    "A product review compared several gadgets made by companies in {c}.",
    "Students at a university in {c} studied how companies are founded.",
    "{p} gave a talk about the product that a company made in the city.",
]


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    supporting: tuple[str, ...]  # chunk ids, one per hop
    answer: str  # entity id
    hops: int


@dataclass(slots=True)
class Corpus:
    documents: list[Document] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


class _Builder:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.corpus = Corpus()
        self.names: set[str] = set()

    def name(self, kind: str) -> str:
        while True:
            parts = [self.rng.choice(_SYLLABLES) for _ in range(self.rng.randint(2, 3))]
            word = "".join(parts).capitalize()
            full = {
                "person": f"{word} {''.join(self.rng.choice(_SYLLABLES) for _ in range(2)).capitalize()}",
                "company": f"{word} Industries" if self.rng.random() < 0.5 else f"{word} Labs",
                "city": word,
                "product": f"{word} {self.rng.randint(2, 9)}",
                "university": f"University of {word}",
            }[kind]
            if full not in self.names:
                self.names.add(full)
                return full

    def entity(self, kind: str) -> Entity:
        name = self.name(kind)
        ent = Entity(id=f"{kind}:{name.lower().replace(' ', '-')}", name=name, type=kind)
        self.corpus.entities.append(ent)
        return ent

    def fact(self, rel: str, s: Entity, t: Entity) -> str:
        """One fact, one document, one chunk; returns the chunk id."""
        doc_id = f"doc-{len(self.corpus.documents):05d}"
        chunk_id = f"{doc_id}#0"
        text = _FACTS[rel][0].format(s=s.name, t=t.name)
        self.corpus.documents.append(Document(id=doc_id, title=f"Note {len(self.corpus.documents)}"))
        self.corpus.chunks.append(Chunk(id=chunk_id, document_id=doc_id, text=text, entities=[s.id, t.id]))
        self.corpus.relations.append(Relation(source=s.id, target=t.id, type=rel, chunks=[chunk_id]))
        return chunk_id

    def noise(self, city: Entity, person: Entity) -> None:
        doc_id = f"doc-{len(self.corpus.documents):05d}"
        text = self.rng.choice(_NOISE).format(c=city.name, p=person.name)
        self.corpus.documents.append(Document(id=doc_id, title="Miscellany"))
        self.corpus.chunks.append(Chunk(id=f"{doc_id}#0", document_id=doc_id, text=text, entities=[city.id, person.id]))


def multihop_corpus(seed: int = 0, chains: int = 40, distractors: int = 3) -> Corpus:
    """`chains` small worlds (a founder, a company, its city and product, a university), each giving a
    2-hop and a 3-hop question, plus `distractors` unrelated facts and noise chunks per chain."""
    b = _Builder(random.Random(seed))
    people: list[Entity] = []
    cities: list[Entity] = []
    companies: list[Entity] = []
    for _ in range(chains):
        founder, company, city = b.entity("person"), b.entity("company"), b.entity("city")
        product, uni = b.entity("product"), b.entity("university")
        c_found = b.fact("FOUNDED", founder, company)
        c_city = b.fact("HEADQUARTERED_IN", company, city)
        c_product = b.fact("MAKES", company, product)
        c_uni = b.fact("STUDIED_AT", founder, uni)
        b.corpus.questions.append(
            Question(f"In which city is the company founded by {founder.name} based?", (c_found, c_city), city.id, 2)
        )
        b.corpus.questions.append(
            Question(
                f"What product does the company started by the graduate of {uni.name} make?",
                (c_uni, c_found, c_product),
                product.id,
                3,
            )
        )
        people.append(founder)
        cities.append(city)
        companies.append(company)
    for i in range(chains * distractors):
        person, city, company = b.rng.choice(people), b.rng.choice(cities), b.rng.choice(companies)
        other = b.entity("person")
        kind = i % 3
        if kind == 0:
            b.fact("BORN_IN", person, b.rng.choice(cities))
        elif kind == 1:
            b.fact("WORKS_FOR", other, company)
        else:
            b.noise(city, person)
    return b.corpus

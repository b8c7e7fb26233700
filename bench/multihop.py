"""A harder synthetic multi-hop benchmark: an invented world, many phrasings, typed questions.

`generate(seed, size)` is pure and deterministic (same seed and size, same corpus, whatever the
hash seed of the process). It builds a small world of countries, cities, universities, companies,
products and people, states every fact in its own passage, packs the passages into documents,
and hands the graph over pre-extracted, as `torua.model` Documents, Chunks, Entities and
Relations ready for one `upsert`: every relation carries the chunk that states it (`chunks`), and
every chunk lists the entities it mentions, including those it refers to only as "she" or "the
company".

What makes it harder than `torua.synthetic.multihop_corpus`:

- **Paraphrase on both sides**: every relation has five to seven passage sentences and every
  question shape three to five phrasings, written with different words ("grew up in" in the
  passage, "hometown" in the question).
- **Back-references**: passages about one entity sit together in a document; after the first,
  about half name it only as "she", "his", "the chemist", "the firm" or "its", so the passage
  shares no word with the entity's name (the chunk's `entities` still list it, as an extractor
  with coreference would).
- **Near-duplicate names**: names are built from a pool of stems shared across types
  ("Kalo Foods", "Kalo Industries", "Kaloville", "Kalo Pro"); people share first and family names.
- **Hubs**: a few cities take most births, head offices and campuses, and a few companies most
  employees, so their entities are mentioned by hundreds of passages.
- **Distractors**: facts of relation types no question asks about (LIVES_IN, VISITED, REVIEWED,
  PARTNERED_WITH, SPONSORS) written with the questions' vocabulary ("a conference on where
  companies choose their headquarters"), noise passages that reuse the questions' words and the
  questions' own entities without stating any fact ("A panel in X discussed where the founder of
  Y was born."), and asides that mention an unrelated entity inside a fact passage.

Question kinds (equal numbers of each): `lookup` (1 hop, the control), `chain2`, `chain3`
(compositions of functional relations from one named anchor), `comparison` ("Were X and Y born in
the same city?", yes or no; supporting passages for both branches, one or two hops each) and
`bridge` (the answer is the one entity that two named anchors reach: "Which company based in X
was founded by a graduate of Y?"). Each question lists its supporting chunk ids and the fact
(source, type, target) each of them states.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from torua.model import Chunk, Document, Entity, Relation

__all__ = ["SIZES", "KINDS", "Fact", "Question", "Benchmark", "generate", "summary"]

KINDS = ("lookup", "chain2", "chain3", "comparison", "bridge")

# Entities per type, documents and questions (a multiple of len(KINDS)) per size.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(country=3, city=14, university=8, company=24, person=56, documents=30, questions=40),
    "small": dict(country=6, city=34, university=20, company=60, person=124, documents=110, questions=200),
    "default": dict(country=12, city=80, university=50, company=150, person=310, documents=300, questions=520),
    "large": dict(country=24, city=160, university=100, company=300, person=620, documents=600, questions=1040),
}

_SYLLABLES = [
    "ka", "lo", "ri", "ve", "zan", "tor", "mi", "sel", "dru", "qua", "bex", "nor", "fen", "ilo", "pra",
    "vos", "tem", "yul", "gri", "osh", "ma", "tel", "ru", "sa", "ven", "dor", "ki", "lum", "be", "xa",
    "pol", "ur", "nes", "ta", "gor", "fi",
]
_OCCUPATIONS = ["engineer", "chemist", "economist", "architect", "designer", "physician", "lawyer",
                "geologist", "journalist", "statistician"]

# ---------------------------------------------------------------------------------------------
# Passage sentences. Slots: {S} {s} the source as a subject (capitalised / not), {so} as an object,
# {Sp} {sp} its possessive; the same with T/t for the target. A named entity fills every slot with
# its name ("X's" as possessive); a back-referenced one with "she"/"her"/"the firm"/"its"...
# ---------------------------------------------------------------------------------------------
_PASSAGES: dict[str, list[str]] = {
    "BORN_IN": [
        "{S} was born in {t}.",
        "{S} grew up in {t}, in a house near the river.",
        "{Sp} hometown is {t}.",
        "{T} is where {s} came into the world.",
        "{S} is a native of {t}.",
        "{S} spent the first years of life in {t}.",
        "Records list {t} as {sp} birthplace.",
    ],
    "STUDIED_AT": [
        "{S} earned a degree from {t}.",
        "{S} graduated from {t}.",
        "{S} completed a doctorate at {t}.",
        "{T} awarded {so} a master's degree.",
        "{Sp} studies took place at {t}.",
        "{S} is a graduate of {t}.",
        "{S} read economics at {t}.",
    ],
    "FOUNDED": [
        "{S} founded {t} in a rented workshop.",
        "{S} started {t} with two friends.",
        "{T} was established by {so}.",
        "{S} launched {t} after a decade in research.",
        "{S} set up {t}.",
        "{Tp} founder is {s}.",
        "{T} was created by {so} in a garage.",
    ],
    "WORKS_FOR": [
        "{S} is employed by {t}.",
        "{S} works at {t}.",
        "{S} joined {t} as a senior analyst.",
        "{T} hired {so} last spring.",
        "{Sp} employer is {t}.",
        "{S} draws a salary from {t}.",
        "{S} is on the payroll of {t}.",
    ],
    "MENTORED": [
        "{S} mentored {t}.",
        "{T} learned the trade under {so}.",
        "{S} took {t} on as an apprentice.",
        "{T} trained under the guidance of {so}.",
        "{S} supervised the early work of {t}.",
    ],
    "HEADQUARTERED_IN": [
        "{S} runs its main offices out of {t}.",
        "{S} is headquartered in {t}.",
        "{Sp} head office sits in {t}.",
        "{T} is home to the head office of {so}.",
        "{S} keeps its headquarters in {t}.",
        "{S} is based in {t}.",
        "The main office of {so} is in {t}.",
    ],
    "MAKES": [
        "The flagship product of {so} is the {t}.",
        "{S} manufactures the {t}.",
        "{S} builds the {t} in its own factory.",
        "The {t} is made by {so}.",
        "{Sp} best-known product is the {t}.",
        "{S} sells the {t} worldwide.",
        "The {t} rolls off the assembly lines of {so}.",
    ],
    "ACQUIRED": [
        "{S} acquired {t}.",
        "{S} bought {t} for an undisclosed sum.",
        "{T} was taken over by {so}.",
        "{S} absorbed {t} in a merger.",
        "{T} became a subsidiary of {so}.",
    ],
    "LOCATED_IN:university": [
        "{S} has its campus in {t}.",
        "{S} is located in {t}.",
        "The campus of {so} lies on the edge of {t}.",
        "{T} hosts {so}.",
        "Lectures at {so} are held in {t}.",
    ],
    "LOCATED_IN:city": [
        "{S} is a city in {t}.",
        "{S} lies in the north of {t}.",
        "{S} is one of the largest towns of {t}.",
        "{S} belongs to {t}.",
        "{S} sits on the coast of {t}.",
    ],
    # Facts no question asks about, worded with the questions' vocabulary.
    "LIVES_IN": [
        "{S} now lives in {t}.",
        "These days {s} resides in {t}.",
        "{S} moved to {t} after retiring.",
        "{S} bought a house in {t}.",
    ],
    "VISITED": [
        "{S} travelled to {t} for a conference on where companies choose their headquarters.",
        "{S} gave a lecture in {t} about founders and their hometowns.",
        "{S} visited {t}, a city known for its universities.",
    ],
    "REVIEWED": [
        "{S} reviewed the {t} and praised the company that makes it.",
        "{S} wrote a critical review of the {t}.",
    ],
    "PARTNERED_WITH": [
        "{S} partnered with {t} on a new product line.",
        "{S} and {t} signed a joint venture to build products together.",
    ],
    "SPONSORS": [
        "{S} funds a scholarship at {t} for students born in the region.",
        "{S} sponsors a research chair at {t}.",
    ],
}

# Noise: no fact at all, the questions' words and entities. Slots: {city} {city2} {company}
# {company2} {person} {person2} {uni} {product} {country}.
_NOISE = [
    "A panel in {city} discussed where the founder of {company} was born.",
    "Analysts in {city} asked which company {person} would found next.",
    "{company} and {company2} both sent recruiters to a graduate fair at {uni}.",
    "Reviewers compared the {product} with other products made by companies in {city}.",
    "Several graduates of {uni} now work in {city}.",
    "{person} and {person2} met at a conference on company headquarters in {city}.",
    "A newspaper in {city} profiled the people who started {company}.",
    "Tourists in {city} often visit the campus of {uni}.",
    "{person} was asked which university in {country} students should attend.",
    "Investors debated whether {company} would move its head office to {city2}.",
    "The employees of {company} voted on a new logo designed in {city}.",
    "A documentary about {person} never mentions the city of birth.",
]

_ASIDES = [  # appended to some fact passages: one more entity mentioned, no fact stated
    ("city", " The news broke during a trade fair in {x}."),
    ("person", " {x} was in the audience."),
    ("company", " Rivals such as {x} took note."),
    ("product", " Critics compared it with the {x}."),
]

# ---------------------------------------------------------------------------------------------
# Question shapes. A step is (relation type, +1 from source to target / -1 backwards); every step
# used by a question must lead to exactly one entity. {a} {b} are anchors' names ("the X" for a
# product), {ap} {bp} their possessives.
# ---------------------------------------------------------------------------------------------
Step = tuple[str, int]


@dataclass(frozen=True, slots=True)
class _Chain:
    name: str
    kind: str
    anchor: str  # entity type
    steps: tuple[Step, ...]
    phrasings: tuple[str, ...]


_CHAINS = [
    _Chain("born", "lookup", "person", (("BORN_IN", 1),), (
        "Where was {a} born?", "What is the birthplace of {a}?", "Which city is {a} originally from?",
        "Name the city {a} was born in.")),
    _Chain("studied", "lookup", "person", (("STUDIED_AT", 1),), (
        "Which university did {a} attend?", "Where did {a} study?", "What school did {a} graduate from?",
        "At which university was {a} educated?")),
    _Chain("hq", "lookup", "company", (("HEADQUARTERED_IN", 1),), (
        "Where is {a} headquartered?", "In which city does {a} have its head office?",
        "What city is {a} based in?")),
    _Chain("founder", "lookup", "company", (("FOUNDED", -1),), (
        "Who founded {a}?", "Who is the founder of {a}?", "Which person started {a}?", "Who created {a}?")),
    _Chain("maker", "lookup", "product", (("MAKES", -1),), (
        "Which company makes {a}?", "Who manufactures {a}?", "What firm produces {a}?")),
    _Chain("employer", "lookup", "person", (("WORKS_FOR", 1),), (
        "Who employs {a}?", "Which company does {a} work for?", "Where does {a} work?")),
    _Chain("campus", "lookup", "university", (("LOCATED_IN", 1),), (
        "In which city is {a} located?", "Where is the campus of {a}?", "What city hosts {a}?")),
    # two hops
    _Chain("founded>hq", "chain2", "person", (("FOUNDED", 1), ("HEADQUARTERED_IN", 1)), (
        "In which city is the company founded by {a} based?",
        "Where does the firm that {a} started have its headquarters?",
        "{a} started a company; in what city is it headquartered?",
        "What city hosts the head office of {ap} company?")),
    _Chain("founder>born", "chain2", "company", (("FOUNDED", -1), ("BORN_IN", 1)), (
        "Where was the founder of {a} born?", "What is the hometown of the person who started {a}?",
        "Which city does the creator of {a} come from?")),
    _Chain("studied>campus", "chain2", "person", (("STUDIED_AT", 1), ("LOCATED_IN", 1)), (
        "In which city did {a} attend university?", "Where is the university {a} graduated from located?",
        "What city is home to {ap} alma mater?")),
    _Chain("maker>hq", "chain2", "product", (("MAKES", -1), ("HEADQUARTERED_IN", 1)), (
        "Where is the maker of {a} headquartered?", "In which city is the company behind {a} based?",
        "{A} is produced by a company based in which city?")),
    _Chain("employer>makes", "chain2", "person", (("WORKS_FOR", 1), ("MAKES", 1)), (
        "What product does {ap} employer make?", "What does the company {a} works for manufacture?",
        "Name the flagship product of the firm that employs {a}.")),
    _Chain("born>country", "chain2", "person", (("BORN_IN", 1), ("LOCATED_IN", 1)), (
        "In which country was {a} born?", "What country is {a} originally from?",
        "Which nation is the hometown of {a} in?")),
    _Chain("maker>founder", "chain2", "product", (("MAKES", -1), ("FOUNDED", -1)), (
        "Who founded the company that makes {a}?", "Who started the maker of {a}?",
        "{A} comes from a firm founded by whom?")),
    _Chain("mentor>studied", "chain2", "person", (("MENTORED", -1), ("STUDIED_AT", 1)), (
        "Where did {ap} mentor study?", "Which university did the person who mentored {a} attend?",
        "{ap} mentor graduated from which school?")),
    # three hops
    _Chain("founded>hq>country", "chain3", "person",
           (("FOUNDED", 1), ("HEADQUARTERED_IN", 1), ("LOCATED_IN", 1)), (
        "In which country is the company founded by {a} headquartered?",
        "The firm {a} started has its head office in which country?",
        "What country is the company created by {a} based in?")),
    _Chain("maker>founder>studied", "chain3", "product", (("MAKES", -1), ("FOUNDED", -1), ("STUDIED_AT", 1)), (
        "Which university did the founder of the company that makes {a} attend?",
        "Where did the person who started the maker of {a} study?",
        "The firm behind {a} was founded by a graduate of which school?")),
    _Chain("employer>founder>born", "chain3", "person", (("WORKS_FOR", 1), ("FOUNDED", -1), ("BORN_IN", 1)), (
        "Where was the founder of {ap} employer born?",
        "What is the hometown of the person who started the company {a} works for?",
        "The company that employs {a} was founded by someone from which city?")),
    _Chain("studied>campus>country", "chain3", "person",
           (("STUDIED_AT", 1), ("LOCATED_IN", 1), ("LOCATED_IN", 1)), (
        "In which country did {a} go to university?",
        "The university {a} graduated from is in which country?",
        "What country is {ap} alma mater in?")),
    _Chain("maker>hq>country", "chain3", "product",
           (("MAKES", -1), ("HEADQUARTERED_IN", 1), ("LOCATED_IN", 1)), (
        "In which country is the maker of {a} based?",
        "The company that produces {a} has its head office in which country?",
        "What country is the manufacturer of {a} headquartered in?")),
    _Chain("mentor>founded>makes", "chain3", "person", (("MENTORED", -1), ("FOUNDED", 1), ("MAKES", 1)), (
        "What product is made by the company that {ap} mentor founded?",
        "The person who mentored {a} started a firm; what does it manufacture?",
        "Name the flagship product of the company founded by the mentor of {a}.")),
    _Chain("acquirer>founder>born", "chain3", "company", (("ACQUIRED", -1), ("FOUNDED", -1), ("BORN_IN", 1)), (
        "Where was the founder of the company that acquired {a} born?",
        "{A} was bought by a firm whose founder comes from which city?",
        "What is the hometown of the person who started the company that took over {a}?")),
]

_COMPARISONS = [
    _Chain("same-born", "comparison", "person", (("BORN_IN", 1),), (
        "Were {a} and {b} born in the same city?", "Do {a} and {b} share a hometown?",
        "Is the birthplace of {a} the same as that of {b}?", "Did {a} and {b} come into the world in one city?")),
    _Chain("same-studied", "comparison", "person", (("STUDIED_AT", 1),), (
        "Did {a} and {b} attend the same university?", "Are {a} and {b} alumni of the same school?",
        "Did {a} study at the university {b} went to?")),
    _Chain("same-hq", "comparison", "company", (("HEADQUARTERED_IN", 1),), (
        "Are {a} and {b} headquartered in the same city?", "Do {a} and {b} have their head offices in one city?",
        "Is {a} based in the same city as {b}?")),
    _Chain("same-employer", "comparison", "person", (("WORKS_FOR", 1),), (
        "Do {a} and {b} work for the same company?", "Are {a} and {b} colleagues at one employer?",
        "Is the employer of {a} also the employer of {b}?")),
    _Chain("same-maker-hq", "comparison", "product", (("MAKES", -1), ("HEADQUARTERED_IN", 1)), (
        "Are the makers of {a} and {b} based in the same city?",
        "Do the companies behind {a} and {b} have their headquarters in one city?")),
    _Chain("same-founder-born", "comparison", "company", (("FOUNDED", -1), ("BORN_IN", 1)), (
        "Were the founders of {a} and {b} born in the same city?",
        "Do the people who started {a} and {b} share a hometown?")),
]


@dataclass(frozen=True, slots=True)
class _Bridge:
    name: str
    answer: str  # entity type
    left: tuple[Step, ...]  # from the answer to the first anchor {x}
    right: tuple[Step, ...]  # from the answer to the second anchor {y}
    phrasings: tuple[str, ...]


_BRIDGES = [
    _Bridge("born+employer", "person", (("BORN_IN", 1),), (("WORKS_FOR", 1),), (
        "Who was born in {x} and works for {y}?", "Which employee of {y} is a native of {x}?",
        "Name the person from {x} who is on the staff of {y}.")),
    _Bridge("studied+born", "person", (("STUDIED_AT", 1),), (("BORN_IN", 1),), (
        "Which graduate of {x} was born in {y}?", "Who studied at {x} and comes from {y}?",
        "Name the alumnus of {x} whose birthplace is {y}.")),
    _Bridge("studied+employer", "person", (("STUDIED_AT", 1),), (("WORKS_FOR", 1),), (
        "Which alumnus of {x} works at {y}?", "Who graduated from {x} and is employed by {y}?",
        "Name the {y} employee who studied at {x}.")),
    _Bridge("hq+founder-studied", "company", (("HEADQUARTERED_IN", 1),), (("FOUNDED", -1), ("STUDIED_AT", 1)), (
        "Which company based in {x} was founded by a graduate of {y}?",
        "Name the firm headquartered in {x} that an alumnus of {y} started.",
        "An alumnus of {y} created a company with its head office in {x}; which one?")),
    _Bridge("hq+founder-born", "company", (("HEADQUARTERED_IN", 1),), (("FOUNDED", -1), ("BORN_IN", 1)), (
        "Which company headquartered in {x} has a founder who was born in {y}?",
        "Which firm based in {x} was started by someone from {y}?",
        "Someone born in {y} founded a company based in {x}; name it.")),
]


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fact:
    source: str
    type: str
    target: str


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    kind: str  # one of KINDS
    shape: str  # the chain / comparison / bridge it was built from
    text: str
    supporting: tuple[str, ...]  # chunk ids, one per fact
    facts: tuple[Fact, ...]  # the fact each supporting chunk states, path order
    answer: str  # an entity id, or "yes" / "no" for comparisons
    anchors: tuple[str, ...]  # the entities the question names

    @property
    def hops(self) -> int:
        return len(self.facts)


@dataclass(slots=True)
class Benchmark:
    seed: int
    size: str
    documents: list[Document] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    backref_chunks: tuple[str, ...] = ()  # fact passages that name their subject only by reference


# ---------------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Ent:
    id: str
    name: str
    type: str
    gender: str = ""  # people: "f" / "m"
    occupation: str = ""


@dataclass(slots=True)
class _Passage:
    text: str
    entities: list[str]
    fact: Fact | None = None
    backref: bool = False


class _World:
    def __init__(self, rng: random.Random, size: dict[str, int]) -> None:
        self.rng = rng
        self.size = size
        self.ents: dict[str, _Ent] = {}
        self.by_type: dict[str, list[str]] = defaultdict(list)
        self.names: set[str] = set()
        self.facts: list[tuple[Fact, str]] = []  # (fact, focal entity: whose passage group it joins)
        self.out: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.inn: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.hub_weight: dict[str, float] = {}
        n_stems = max(8, (size["city"] + size["university"] + 2 * size["company"] + size["country"]) * 10 // 22)
        self.stems = self._stems(n_stems)
        self.first_names = self._stems(max(12, size["person"] // 6), suffixes=["", "a", "o", "en"])
        self.family_names = self._stems(max(16, size["person"] // 3), suffixes=["", "son", "ek", "ova", "ari", "in"])

    # names ---------------------------------------------------------------------------------
    def _stems(self, n: int, suffixes: Sequence[str] = ("",)) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        while len(out) < n:
            word = ("".join(self.rng.choice(_SYLLABLES) for _ in range(2)) + self.rng.choice(suffixes)).capitalize()
            if word not in seen:
                seen.add(word)
                out.append(word)
        return out

    def _name(self, kind: str) -> str:
        r = self.rng
        for _ in range(10_000):
            stem = r.choice(self.stems)
            if kind == "person":
                name = f"{r.choice(self.first_names)} {r.choice(self.family_names)}"
            elif kind == "country":
                name = stem + r.choice(["ia", "land", "istan", "ora", "esh"])
            elif kind == "city":
                name = r.choice([stem, stem + "a", stem + "ville", f"Port {stem}", f"New {stem}", f"{stem} Falls", stem + "burg"])
            elif kind == "university":
                name = r.choice([f"{stem} University", f"University of {stem}", f"{stem} Institute of Technology",
                                 f"{stem} College", f"{stem} Polytechnic"])
            elif kind == "company":
                name = f"{stem} " + r.choice(["Industries", "Labs", "Foods", "Systems", "Holdings", "Works", "Motors",
                                              "Analytics", "Dynamics", "Group"])
            else:  # product
                name = stem + r.choice(["", "o", "ex", "ix"]) + " " + r.choice(
                    ["Pro", "Mini", "Max", "Air", "X2", "S5", "One", "Lite", "7", "9"])
            if name not in self.names:
                self.names.add(name)
                return name
        raise RuntimeError(f"ran out of {kind} names")

    def add(self, kind: str) -> str:
        name = self._name(kind)
        ent = _Ent(id=f"{kind}:{name.lower().replace(' ', '-')}", name=name, type=kind)
        if kind == "person":
            ent.gender = self.rng.choice("fm")
            ent.occupation = self.rng.choice(_OCCUPATIONS)
        self.ents[ent.id] = ent
        self.by_type[kind].append(ent.id)
        return ent.id

    # facts ---------------------------------------------------------------------------------
    def fact(self, s: str, rel: str, t: str, focal: str | None = None) -> None:
        f = Fact(s, rel, t)
        self.facts.append((f, focal or s))
        self.out[(s, rel)].append(t)
        self.inn[(t, rel)].append(s)

    def pick(self, kind: str, exclude: Sequence[str] = ()) -> str:
        """One entity of a type, hubs far more likely."""
        ids = [i for i in self.by_type[kind] if i not in exclude]
        return self.rng.choices(ids, weights=[self.hub_weight.get(i, 1.0) for i in ids])[0]

    def build(self) -> None:
        r, n = self.rng, self.size
        for kind in ("country", "city", "university", "company", "person"):
            for _ in range(n[kind]):
                self.add(kind)
        for _ in range(n["company"]):
            self.add("product")
        cities, companies, people = self.by_type["city"], self.by_type["company"], self.by_type["person"]
        for c in cities[: max(2, len(cities) // 14)]:
            self.hub_weight[c] = 10.0
        for c in companies[: max(2, len(companies) // 18)]:
            self.hub_weight[c] = 8.0
        for i, c in enumerate(cities):
            self.fact(c, "LOCATED_IN", self.by_type["country"][i % n["country"]] if i < n["country"] else
                      r.choice(self.by_type["country"]))
        for u in self.by_type["university"]:
            self.fact(u, "LOCATED_IN", self.pick("city"))
        founders = r.sample(people, len(companies))
        for company, product, founder in zip(companies, self.by_type["product"], founders):
            self.fact(company, "HEADQUARTERED_IN", self.pick("city"))
            self.fact(company, "MAKES", product)
            self.fact(founder, "FOUNDED", company, focal=r.choice([founder, company]))
        founder_set = set(founders)
        for p in people:
            self.fact(p, "BORN_IN", self.pick("city"))
            if r.random() < 0.9:
                self.fact(p, "STUDIED_AT", self.pick("university"))
            if p not in founder_set and r.random() < 0.92:
                self.fact(p, "WORKS_FOR", self.pick("company"))
            if r.random() < 0.4:
                self.fact(p, "LIVES_IN", self.pick("city"))
            if r.random() < 0.2:
                self.fact(p, "VISITED", self.pick("city"))
            if r.random() < 0.15:
                self.fact(p, "REVIEWED", r.choice(self.by_type["product"]))
        mentors = r.sample(people, max(2, len(people) // 8))
        for p in people:
            if r.random() < 0.35:
                m = r.choice(mentors)
                if m != p:
                    self.fact(m, "MENTORED", p)
        for c in companies:
            if r.random() < 0.25:
                acquirer = r.choice(companies)
                if acquirer != c and acquirer not in self.out.get((c, "ACQUIRED"), []):
                    self.fact(acquirer, "ACQUIRED", c, focal=r.choice([acquirer, c]))
            if r.random() < 0.15:
                self.fact(c, "PARTNERED_WITH", r.choice([x for x in companies if x != c]))
            if r.random() < 0.2:
                self.fact(c, "SPONSORS", r.choice(self.by_type["university"]))

    # following relations -------------------------------------------------------------------
    def step(self, e: str, st: Step) -> str | None:
        rel, d = st
        nxt = self.out.get((e, rel), []) if d > 0 else self.inn.get((e, rel), [])
        return nxt[0] if len(nxt) == 1 else None

    def walk(self, start: str, steps: Sequence[Step]) -> tuple[str, list[Fact]] | None:
        cur, facts, seen = start, [], [start]
        for st in steps:
            nxt = self.step(cur, st)
            if nxt is None or nxt in seen:
                return None
            facts.append(Fact(cur, st[0], nxt) if st[1] > 0 else Fact(nxt, st[0], cur))
            seen.append(nxt)
            cur = nxt
        return cur, facts

    def mention(self, eid: str) -> str:
        e = self.ents[eid]
        return f"the {e.name}" if e.type == "product" else e.name


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------
def _possessive(text: str) -> str:
    return text + "'s"


def _fill(template: str, **names: str) -> str:
    forms: dict[str, str] = {}
    for key, value in names.items():
        forms[key] = value
        forms[key + "p"] = _possessive(value)
        forms[key.upper()] = value[0].upper() + value[1:]
    text = template.format(**forms)
    return text[0].upper() + text[1:]


class _Questions:
    def __init__(self, w: _World) -> None:
        self.w = w
        self.rng = w.rng
        self.out: list[tuple[str, str, str, list[Fact], str, tuple[str, ...]]] = []
        self.seen: set[tuple[str, ...]] = set()

    def _chain(self, c: _Chain) -> bool:
        w = self.w
        for a in self.rng.sample(w.by_type[c.anchor], len(w.by_type[c.anchor])):
            key = (c.name, a)
            found = w.walk(a, c.steps)
            if key in self.seen or found is None:
                continue
            self.seen.add(key)
            end, facts = found
            text = _fill(self.rng.choice(c.phrasings), a=w.mention(a))
            self.out.append((c.kind, c.name, text, facts, end, (a,)))
            return True
        return False

    def _comparison(self, c: _Chain, want_same: bool) -> bool:
        w = self.w
        ends: dict[str, tuple[str, list[Fact]]] = {}
        for a in w.by_type[c.anchor]:
            found = w.walk(a, c.steps)
            if found is not None:
                ends[a] = found
        pool = list(ends)
        for a in self.rng.sample(pool, len(pool)):
            same = [b for b in pool if b != a and ends[b][0] == ends[a][0]]
            diff = [b for b in pool if ends[b][0] != ends[a][0]]
            choices = same if want_same else diff
            self.rng.shuffle(choices)
            for b in choices:
                key = (c.name, *sorted((a, b)))
                if key in self.seen or b in {x for f in ends[a][1] for x in (f.source, f.target)}:
                    continue
                self.seen.add(key)
                text = _fill(self.rng.choice(c.phrasings), a=w.mention(a), b=w.mention(b))
                answer = "yes" if want_same else "no"
                self.out.append((c.kind, c.name, text, ends[a][1] + ends[b][1], answer, (a, b)))
                return True
        return False

    def _bridge(self, b: _Bridge) -> bool:
        w = self.w
        by_pair: dict[tuple[str, str], list[tuple[str, list[Fact]]]] = defaultdict(list)
        for e in w.by_type[b.answer]:
            left, right = w.walk(e, b.left), w.walk(e, b.right)
            if left is None or right is None:
                continue
            by_pair[(left[0], right[0])].append((e, left[1] + right[1]))
        unique = [pair for pair, answers in by_pair.items() if len(answers) == 1]
        for pair in self.rng.sample(unique, len(unique)):
            key = (b.name, *pair)
            if key in self.seen:
                continue
            self.seen.add(key)
            answer, facts = by_pair[pair][0]
            text = _fill(self.rng.choice(b.phrasings), x=w.mention(pair[0]), y=w.mention(pair[1]))
            self.out.append(("bridge", b.name, text, facts, answer, pair))
            return True
        return False

    def build(self, per_kind: int) -> None:
        for kind in KINDS:
            made, i = 0, 0
            if kind == "comparison":
                shapes: list[object] = list(_COMPARISONS)
            elif kind == "bridge":
                shapes = list(_BRIDGES)
            else:
                shapes = [c for c in _CHAINS if c.kind == kind]
            exhausted: set[str] = set()
            per_shape: Counter[str] = Counter()
            while made < per_kind and len(exhausted) < len(shapes):
                shape = shapes[i % len(shapes)]
                i += 1
                name = shape.name  # type: ignore[attr-defined]
                if name in exhausted:
                    continue
                if isinstance(shape, _Bridge):
                    ok = self._bridge(shape)
                elif kind == "comparison":
                    assert isinstance(shape, _Chain)
                    same = per_shape[name] % 2 == 0  # yes and no in turn, per shape
                    ok = self._comparison(shape, want_same=same) or self._comparison(shape, want_same=not same)
                else:
                    assert isinstance(shape, _Chain)
                    ok = self._chain(shape)
                if ok:
                    made += 1
                    per_shape[name] += 1
                else:
                    exhausted.add(name)
            if made < per_kind:
                raise ValueError(f"only {made} {kind} questions fit this world; use a larger size")


# ---------------------------------------------------------------------------------------------
# Passages and documents
# ---------------------------------------------------------------------------------------------
def _forms(w: _World, eid: str, backref: bool, rng: random.Random) -> dict[str, str]:
    """Subject, object and possessive forms of an entity, named or referred back to."""
    e = w.ents[eid]
    if not backref:
        return {"n": e.name, "o": e.name, "p": _possessive(e.name)}
    if e.type == "person":
        if rng.random() < 0.3:
            return {"n": f"the {e.occupation}", "o": f"the {e.occupation}", "p": f"the {e.occupation}'s"}
        return {"n": "she", "o": "her", "p": "her"} if e.gender == "f" else {"n": "he", "o": "him", "p": "his"}
    noun = {"company": rng.choice(["the company", "the firm"]), "university": rng.choice(["the university", "the school"]),
            "city": "the city", "country": "the country", "product": "the device"}[e.type]
    if rng.random() < 0.5:
        return {"n": noun, "o": noun, "p": "its"}
    return {"n": noun, "o": noun, "p": f"{noun}'s"}


def _render(template: str, s: dict[str, str], t: dict[str, str]) -> str:
    def cap(x: str) -> str:
        return x[0].upper() + x[1:]

    text = template.format(S=cap(s["n"]), s=s["n"], so=s["o"], Sp=cap(s["p"]), sp=s["p"],
                           T=cap(t["n"]), t=t["n"], to=t["o"], Tp=cap(t["p"]), tp=t["p"])
    return cap(text)


def _fact_passage(w: _World, f: Fact, focal: str, backref: bool, rng: random.Random) -> _Passage:
    key = f.type if f.type != "LOCATED_IN" else f"LOCATED_IN:{w.ents[f.source].type}"
    template = rng.choice(_PASSAGES[key])
    s_forms = _forms(w, f.source, backref and focal == f.source, rng)
    t_forms = _forms(w, f.target, backref and focal == f.target, rng)
    if w.ents[f.target].type == "product":  # templates say "the {t}"
        t_forms = {k: w.ents[f.target].name for k in t_forms}
    text = _render(template, s_forms, t_forms)
    mentions = [f.source, f.target]
    if rng.random() < 0.2:  # an aside: one more entity, no more facts
        kind, aside = rng.choice(_ASIDES)
        x = w.pick(kind, exclude=mentions)
        text += aside.format(x=w.ents[x].name)
        mentions.append(x)
    return _Passage(text=text, entities=mentions, fact=f, backref=backref)


def _noise_passage(w: _World, anchors: list[str], rng: random.Random) -> _Passage:
    template = rng.choice(_NOISE)
    # Noise is about the questions' own entities where it can be, or about the hubs.
    def ent(kind: str, exclude: Sequence[str] = ()) -> str:
        own = [a for a in anchors if w.ents[a].type == kind and a not in exclude]
        if own and rng.random() < 0.6:
            return rng.choice(own)
        return w.pick(kind, exclude=exclude)

    slots: dict[str, str] = {}
    mentions: list[str] = []
    for slot, kind in (("city", "city"), ("city2", "city"), ("company", "company"), ("company2", "company"),
                       ("person", "person"), ("person2", "person"), ("uni", "university"),
                       ("product", "product"), ("country", "country")):
        if "{" + slot + "}" in template:
            eid = ent(kind, exclude=mentions)
            slots[slot] = w.ents[eid].name
            mentions.append(eid)
    if "{uni}" in template and "{city}" in template:  # never say a university is where it is not... or is
        uni = next(m for m in mentions if w.ents[m].type == "university")
        city = next(m for m in mentions if w.ents[m].type == "city")
        if w.out.get((uni, "LOCATED_IN")) == [city]:
            other = w.pick("city", exclude=[city])
            slots["city"] = w.ents[other].name
            mentions[mentions.index(city)] = other
    return _Passage(text=template.format(**slots), entities=mentions)


def generate(seed: int = 7, size: str = "default") -> Benchmark:
    """The benchmark for one seed and size (see SIZES); the same arguments give the same benchmark."""
    dims = SIZES[size]
    rng = random.Random(f"multihop:{seed}:{size}")
    w = _World(rng, dims)
    w.build()
    qs = _Questions(w)
    qs.build(dims["questions"] // len(KINDS))

    # Passage groups: the facts about one focal entity, written together; the first passage of a
    # group names its entity, later ones refer back to it half of the time.
    groups: dict[str, list[Fact]] = defaultdict(list)
    for f, focal in w.facts:
        groups[focal].append(f)
    bundles: list[list[_Passage]] = []
    for focal, facts in groups.items():
        facts = list(facts)
        rng.shuffle(facts)
        bundles.append([_fact_passage(w, f, focal, backref=i > 0 and rng.random() < 0.5, rng=rng)
                        for i, f in enumerate(facts)])
    anchors = [a for q in qs.out for a in q[5]]
    for _ in range(len(w.facts) // 9):
        bundles.append([_noise_passage(w, anchors, rng)])
    rng.shuffle(bundles)

    bench = Benchmark(seed=seed, size=size)
    total = sum(len(b) for b in bundles)
    n_docs = dims["documents"]
    chunk_of: dict[Fact, str] = {}
    backrefs: list[str] = []
    done = 0
    doc_passages: dict[int, list[_Passage]] = defaultdict(list)
    for b in bundles:
        doc_passages[done * n_docs // total].extend(b)
        done += len(b)
    for d, passages in sorted(doc_passages.items()):
        doc_id = f"mh-{d:04d}"
        bench.documents.append(Document(id=doc_id, title=f"Bulletin {d + 1}", metadata={"benchmark": "multihop"}))
        for pos, p in enumerate(passages):
            chunk_id = f"{doc_id}#{pos}"
            mentions = list(dict.fromkeys(p.entities))
            bench.chunks.append(Chunk(id=chunk_id, document_id=doc_id, text=p.text, entities=mentions, position=pos))
            if p.fact is not None:
                chunk_of[p.fact] = chunk_id
                bench.relations.append(Relation(source=p.fact.source, target=p.fact.target, type=p.fact.type,
                                                chunks=[chunk_id]))
                if p.backref:
                    backrefs.append(chunk_id)
    bench.backref_chunks = tuple(backrefs)
    bench.entities = [Entity(id=e.id, name=e.name, type=e.type) for e in w.ents.values()]
    for i, (kind, shape, text, facts, answer, anchor_ids) in enumerate(qs.out):
        bench.questions.append(Question(
            id=f"q{i:04d}", kind=kind, shape=shape, text=text, supporting=tuple(chunk_of[f] for f in facts),
            facts=tuple(facts), answer=answer, anchors=anchor_ids,
        ))
    return bench


def summary(b: Benchmark) -> str:
    """A few lines describing the benchmark."""
    types = Counter(e.type for e in b.entities)
    rels = Counter(r.type for r in b.relations)
    kinds = Counter(q.kind for q in b.questions)
    shapes = Counter(q.shape for q in b.questions)
    support = {c for q in b.questions for c in q.supporting}
    mentions = Counter(e for c in b.chunks for e in c.entities)
    top = mentions.most_common(3)
    fact_chunks = {c for r in b.relations for c in r.chunks}
    noise = len(b.chunks) - len(fact_chunks)
    backref_support = len(support & set(b.backref_chunks))
    multi = sum(1 for c in b.chunks if len(c.entities) >= 3)
    lines = [
        f"seed {b.seed}, size {b.size}: {len(b.entities)} entities, {len(b.relations)} relations, "
        f"{len(b.chunks)} passages in {len(b.documents)} documents, {len(b.questions)} questions",
        "entities: " + ", ".join(f"{k} {v}" for k, v in sorted(types.items())),
        "relations: " + ", ".join(f"{k} {v}" for k, v in sorted(rels.items())),
        "questions: " + ", ".join(f"{k} {kinds[k]}" for k in KINDS) + f" ({len(shapes)} shapes)",
        f"passages: {len(fact_chunks)} state a fact ({len(b.backref_chunks)} name their subject only by "
        f"back-reference), {noise} noise, {multi} mention 3+ entities; "
        f"{backref_support} of {len(support)} supporting passages use a back-reference",
        "most mentioned: " + ", ".join(f"{b_id} ({n} passages)" for b_id, n in top),
    ]
    return "\n".join(lines)

"""The bundled quickstart task: extract name, age and city from a sentence as JSON.

Deterministic for a seed. Eval rows use sentence templates never seen in training, so the
eval measures the skill, not memorised phrasings.
"""

import json
import random

SYSTEM_PROMPT = (
    'Extract the person\'s name, age and city from the sentence. Reply with JSON only, '
    'exactly like {"name": "Ada Lovelace", "age": 36, "city": "London"}.'
)
SOURCE = "tuneops:bundled/json-extraction"
LICENSE = "Apache-2.0"

FIRST = ["Alice", "Bob", "Carla", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Keiko",
         "Liam", "Maya", "Nikolai", "Olivia", "Pedro", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera",
         "Wen", "Ximena", "Yusuf", "Zoe", "Anika", "Bruno", "Chloe", "Diego"]
LAST = ["Smith", "Okafor", "Novak", "Garcia", "Tanaka", "Müller", "Rossi", "Haddad", "Kowalski", "Silva",
        "Nguyen", "Andersen", "Patel", "Dubois", "Ivanova", "Moreau", "Costa", "Fischer", "Kim", "Oliveira"]
CITIES = ["Paris", "Lagos", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul", "Toronto",
          "Nairobi", "Berlin", "Lisbon", "Mumbai", "Dublin", "Austin", "Prague", "Quito", "Vienna", "Perth"]

TRAIN_TEMPLATES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, a {age}-year-old from {city}.",
    "{name}, aged {age}, has lived in {city} for years.",
    "My neighbour {name} just turned {age}; she moved here from {city}.",
    "Our new colleague {name} ({age}) is based in {city}.",
    "{name} lives in {city} and is {age}.",
    "At {age}, {name} opened a bakery in {city}.",
    "The form says: name {name}, age {age}, city {city}.",
    "{city} resident {name} celebrated a {age}th birthday yesterday.",
    "Yesterday I met {name} in {city}; they told me they are {age}.",
    "{name} ({city}, {age}) won the chess tournament.",
    "Born {age} years ago, {name} still calls {city} home.",
]
EVAL_TEMPLATES = [
    "Residing in {city}, {name} turned {age} this spring.",
    "Age {age}, from {city}: that is {name} in a nutshell.",
    "The speaker, {name}, is a {age} year old engineer living in {city}.",
    "{name} flew back to {city} right after the {age}th birthday party.",
    "Please welcome {name}, who is {age} and comes to us from {city}.",
]


def _row(rng: random.Random, templates: list[str]) -> dict:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    age = rng.randint(18, 85)
    city = rng.choice(CITIES)
    sentence = rng.choice(templates).format(name=name, age=age, city=city)
    answer = json.dumps({"name": name, "age": age, "city": city}, ensure_ascii=False)
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": sentence},
            {"role": "assistant", "content": answer},
        ],
        "source": SOURCE,
        "license": LICENSE,
    }


def json_extraction_rows(n_train: int = 300, n_eval: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows); eval sentences come only from EVAL_TEMPLATES."""
    rng = random.Random(seed)
    return [_row(rng, TRAIN_TEMPLATES) for _ in range(n_train)], [_row(rng, EVAL_TEMPLATES) for _ in range(n_eval)]

"""The bundled quickstart task: extract a person's name, age and city from a text as JSON.

Deterministic for a seed. The held-out set is drawn from *disjoint* pools: its sentence
templates, first names, surnames and cities never occur in training, so the eval measures the
skill (copy the right span, normalise the age to an integer, reply with JSON only), not
memorised phrasings or names.

Texts come in five families, each with its own train and eval templates:

- ``sentence``: one sentence in prose;
- ``quoted``: quoted speech, the person speaking about themselves;
- ``form``: form-like records (``Name: … / Age: …``, ``key=value``, table rows), fields in any order;
- ``multi``: several sentences with distractors (other numbers, years, counts);
- ``letter``: a letter or message signed by the person.

Names are one to three words, with accents and particles (``José Luis``, ``van der Berg``,
``Nguyễn``); cities are one to four words (``Rio de Janeiro``, ``Ho Chi Minh City``); ages are
written in digits or in words (``forty-two``). Every row carries tags — its family plus
``accented``, ``multiword_name``, ``multiword_city``, ``age_words`` where they apply — so the
eval reports per-slice results.
"""

import json
import random

SYSTEM_PROMPT = (
    'Extract the person\'s name, age and city from the text. Reply with JSON only, '
    'exactly like {"name": "Ada Lovelace", "age": 36, "city": "London"}.'
)
SOURCE = "tuneops:bundled/json-extraction"
LICENSE = "Apache-2.0"

# Disjoint pools: (train, eval). Multi-word and accented entries in both, so the eval tests the
# *kind* of name the adapter saw in training, never the very same one.
FIRST = (
    ["Alice", "Bob", "Carla", "David", "Elena", "Farid", "Grace", "Hiro", "Inés", "Jonas", "Keiko", "Liam",
     "Maya", "Nikolai", "Olivia", "Pedro", "Rosa", "Samir", "Tara", "Umar", "Vera", "Wen", "Yusuf", "Zoë",
     "José Luis", "Mary Ann", "Anne-Marie", "Björn", "Chloé", "Søren", "Łukasz", "François", "Ana Lúcia",
     "Jean-Pierre", "Ngozi", "Aiko", "Mohammed Ali", "Dolores", "Kwame", "Ingrid"],
    ["Amara", "Benedikt", "Célia", "Dmitri", "Esther", "Fatima", "Gustavo", "Hana", "Ignacio", "Jana", "Kofi",
     "Leila", "Mateus", "Noémie", "Oskar", "Priya", "Rafael", "Sigríður", "Tomás", "Ulla", "Valentina",
     "Xavier", "Yara", "Zdeněk", "María José", "Jean-Baptiste", "Lars Erik", "Ana Sofía", "Ebru", "Henrik",
     "Mei Ling", "Renée", "Stanisław", "Thandiwe", "Joaquín"],
)
LAST = (
    ["Smith", "Okafor", "Novak", "Garcia", "Tanaka", "Müller", "Rossi", "Haddad", "Kowalski", "Silva",
     "Nguyen", "Andersen", "Patel", "Dubois", "Ivanova", "Moreau", "Costa", "Fischer", "Kim", "Oliveira",
     "van der Berg", "García Márquez", "O'Neill", "Nguyễn", "Ørsted", "Schäfer", "de la Cruz", "Mbeki",
     "Lindqvist", "Yılmaz"],
    ["Adeyemi", "Bergström", "Castellanos", "Dvořák", "Eriksen", "Ferreira", "Gómez", "Horvath", "Ito",
     "Jansen", "Kaur", "Lefèvre", "Mendoza", "Nakamura", "Petrović", "Quintero", "Rahman", "Sørensen",
     "Takahashi", "Ulrich", "van Dijk", "dos Santos", "Al-Farsi", "Łopatka", "Hernández López", "Oyelaran",
     "Wójcik", "MacLeod"],
)
CITIES = (
    ["Paris", "Lagos", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul", "Toronto", "Nairobi",
     "Berlin", "Lisbon", "Mumbai", "Dublin", "Prague", "Quito", "Vienna", "Perth", "Los Angeles",
     "San Francisco", "Cape Town", "Mexico City", "Tel Aviv", "Addis Ababa", "Hong Kong", "Düsseldorf",
     "Malmö", "Göteborg", "Zürich", "Kraków", "Reykjavík", "Salt Lake City", "St. Petersburg", "Bogotá"],
    ["Nagoya", "Accra", "Porto", "Helsinki", "Lyon", "Calgary", "Hanoi", "Valencia", "Santiago", "Tunis",
     "Graz", "Bergen", "Rio de Janeiro", "São Paulo", "Buenos Aires", "Kuala Lumpur", "New Orleans",
     "Ho Chi Minh City", "Las Palmas de Gran Canaria", "Málaga", "Córdoba", "Łódź", "Aarhus", "Montréal",
     "Dar es Salaam", "Würzburg", "Medellín", "Tromsø"],
)

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def age_in_words(n: int) -> str:
    """18 -> 'eighteen', 42 -> 'forty-two' (0 <= n < 100)."""
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


# Templates per family: (train, eval). Slots: {name} {age} {city}, and distractors {n1} {n2} {year}
# {other} (another person's first name) {age2} (their age). {age} is digits or words; forms always use digits.
TEMPLATES: dict[str, tuple[list[str], list[str]]] = {
    "sentence": (
        ["{name} is {age} years old and lives in {city}.",
         "Meet {name}, a {age}-year-old from {city}.",
         "{name}, aged {age}, has lived in {city} for years.",
         "Our new colleague {name} ({age}) is based in {city}.",
         "{name} lives in {city} and is {age}.",
         "At {age}, {name} opened a bakery in {city}.",
         "{city} resident {name} celebrated turning {age} yesterday.",
         "Yesterday I met {name} in {city}; they told me they are {age}.",
         "{name} ({city}, {age}) won the chess tournament.",
         "Born {age} years ago, {name} still calls {city} home."],
        ["Residing in {city}, {name} turned {age} this spring.",
         "Age {age}, from {city}: that is {name} in a nutshell.",
         "The speaker, {name}, is a {age} year old engineer living in {city}.",
         "{name} flew back to {city} right after turning {age}.",
         "Please welcome {name}, who is {age} and comes to us from {city}."],
    ),
    "quoted": (
        ['"I\'m {age} and I live in {city}," said {name}.',
         '"My name is {name}. I am {age}, and {city} is my home."',
         '{name} laughed: "I moved to {city} when I was young, and now I\'m {age}!"',
         '"People in {city} know me as {name}," she says. "I turned {age} in May."',
         '"At {age}, you stop caring what people think," {name} told reporters in {city}.',
         "'I have been living in {city} all my life,' says {name}, {age}."],
        ['"{city} has been good to me," {name} ({age}) said with a smile.',
         '"Hello, I\'m {name}, {age} years old, calling from {city}."',
         'Asked about her age, {name} replied: "{age}, and proud of it. Born and raised in {city}."',
         '"I never thought I\'d retire in {city}," admits {name}, now {age}.'],
    ),
    "form": (
        ["Name: {name}\nAge: {age_d}\nCity: {city}",
         "City: {city}\nName: {name}\nAge: {age_d}",
         "name={name}; age={age_d}; city={city}",
         "NAME | AGE | CITY\n{name} | {age_d} | {city}",
         "Applicant: {name} (age {age_d}) - Residence: {city}",
         "Full name ........ {name}\nCity of residence . {city}\nAge (years) ....... {age_d}"],
        ["Member record\n- Age: {age_d}\n- Location: {city}\n- Full name: {name}",
         "CITY, NAME, AGE\n{city}, {name}, {age_d}",
         "Patient: {name} | Age: {age_d} y | Home town: {city}",
         "[registration] name: {name} / age: {age_d} / city: {city}"],
    ),
    "multi": (
        ["{name} works at a clinic with {n1} beds. She is {age}. The clinic is in {city}.",
         "In {year}, {name} bought a flat in {city}. Today {name} is {age} and has {n2} cats.",
         "{other} and {name} met at school. {name}, now {age}, stayed in {city}; {other} left.",
         "{other} is {age2} and lives abroad. Her cousin {name} is {age} and lives in {city}.",
         "The team has {n1} members. Its captain, {name}, is {age} and trains in {city} every morning.",
         "{name} runs {n2} km every day. Not bad for someone who is {age}! The route goes through {city}."],
        ["{name} has taught for {n2} years. At {age}, she still cycles to school across {city}.",
         "Flight {n1} landed late. Among the passengers was {name} ({age}), returning home to {city}.",
         "{other} is {age2}. {name}, {other}'s neighbour, is {age} and has lived in {city} since {year}.",
         "The orchestra was founded in {year} in {city}. Its youngest violinist, {name}, is only {age}."],
    ),
    "letter": (
        ["Dear editor,\nI am writing from {city} about the new bus lines.\nBest regards,\n{name}, {age}",
         "Hi all! Quick intro: I'm {name}, {age}, joining the {city} office next week. Cheers!",
         "To whom it may concern: I, {name}, aged {age}, of {city}, confirm the details above.",
         "Thanks for the lovely gift!\nLove, {name} ({age}) - {city}"],
        ["Hello team,\nsorry for the delay, the trains in {city} were on strike.\n-- {name}, {age} years old",
         "P.S. from {name}: I turn {age} next Friday, party at my place in {city}!",
         "Signed in {city} by {name}, aged {age}, on the date written below."],
    ),
}
FAMILIES = tuple(TEMPLATES)


def _is_accented(text: str) -> bool:
    return any(ord(c) > 127 for c in text)


def _row(rng: random.Random, split: int, family: str) -> dict:
    first, last = rng.choice(FIRST[split]), rng.choice(LAST[split])
    name = f"{first} {last}"
    age = rng.randint(18, 85)
    city = rng.choice(CITIES[split])
    words = family not in ("form",) and rng.random() < 0.3
    age_text = age_in_words(age) if words else str(age)
    other = rng.choice([f for f in FIRST[split] if f != first])
    text = rng.choice(TEMPLATES[family][split]).format(
        name=name, age=age_text, age_d=age, city=city, other=other,
        n1=rng.randint(2, 400), age2=rng.choice([a for a in range(18, 86) if a != age]), n2=rng.randint(2, 12), year=rng.randint(1975, 2024))
    answer = json.dumps({"name": name, "age": age, "city": city}, ensure_ascii=False)
    tags = [family]
    tags += ["accented"] if _is_accented(name + city) else []
    tags += ["multiword_name"] if len(name.split()) > 2 or "-" in first else []
    tags += ["multiword_city"] if " " in city else []
    tags += ["age_words"] if words else []
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": text},
            {"role": "assistant", "content": answer},
        ],
        "source": SOURCE,
        "license": LICENSE,
        "tags": tags,
    }


def json_extraction_rows(n_train: int = 300, n_eval: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows). Families cycle so each is equally represented; eval rows use only
    the eval templates, names and cities."""
    rng = random.Random(seed)
    train = [_row(rng, 0, FAMILIES[i % len(FAMILIES)]) for i in range(n_train)]
    held_out = [_row(rng, 1, FAMILIES[i % len(FAMILIES)]) for i in range(n_eval)]
    rng.shuffle(train)
    return train, held_out

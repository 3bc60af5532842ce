"""One-time pairing codes such as ``7-crane-orbit``.

A code is a nameplate (1–999: which open invitation) and two words from a list of
256 (16 bits). The whole code is the SPAKE2 password (``mesh/pairing.py``), so a
guess can only be tried online, once per code. The words are short, concrete,
distinct English nouns: no homophones, no two that differ by a single letter,
spelt the same in British and American English.
"""

from __future__ import annotations

import difflib
import random
import re
import secrets
from dataclasses import dataclass

from kiana.errors import InputError

MAX_NAMEPLATE = 999

# fmt: off
WORDS: tuple[str, ...] = (
    "acorn", "actor", "album", "amber", "anchor", "ankle", "apple", "apron", "arrow", "atlas",
    "attic", "badge", "bagel", "baker", "bamboo", "banana", "banjo", "barn", "basin", "basket",
    "beaver", "beetle", "bench", "bike", "bird", "bison", "blade", "bloom", "bottle", "brick",
    "bridge", "brush", "bubble", "bucket", "bugle", "butter", "button", "cabin", "cactus", "camel",
    "camera", "candle", "canoe", "canvas", "canyon", "carpet", "castle", "chalk", "cherry",
    "chess", "circle", "circus", "cliff", "clock", "cloud", "clover", "comet", "compass", "cookie",
    "copper", "crane", "crayon", "crown", "cube", "daisy", "delta", "doctor", "domino", "dragon",
    "drum", "duck", "dune", "eagle", "echo", "elbow", "engine", "falcon", "fence", "field",
    "finger", "flag", "flame", "flute", "forest", "fork", "fossil", "frost", "galaxy", "garden",
    "garlic", "glove", "goat", "grape", "gravel", "guitar", "hammer", "harp", "hawk", "hazel",
    "hedge", "helmet", "hill", "hippo", "honey", "hook", "hotel", "igloo", "iris", "island",
    "ivory", "jacket", "jaguar", "jelly", "jigsaw", "jungle", "kayak", "kettle", "kitten", "kiwi",
    "koala", "ladder", "lagoon", "lake", "lamp", "lava", "lemon", "letter", "lily", "lime", "lion",
    "lizard", "lobster", "magnet", "mango", "maple", "marble", "meadow", "melon", "meteor",
    "mirror", "moon", "moth", "muffin", "museum", "napkin", "nectar", "needle", "nest", "noodle",
    "oak", "oasis", "ocean", "olive", "onion", "orange", "orbit", "orchid", "otter", "owl",
    "oyster", "palace", "panda", "pantry", "paper", "parrot", "pasta", "peanut", "pebble",
    "pencil", "penguin", "pepper", "piano", "pickle", "pigeon", "pillow", "pilot", "pine",
    "planet", "plank", "plaza", "pony", "poppy", "potato", "pumpkin", "puzzle", "quilt", "rabbit",
    "radar", "radio", "raft", "ranch", "raven", "recipe", "ribbon", "river", "robin", "robot",
    "rocket", "saddle", "salad", "salmon", "sandal", "scarf", "shadow", "shell", "shovel",
    "signal", "silver", "skate", "sketch", "sled", "snail", "snow", "sofa", "spider", "sponge",
    "spoon", "spruce", "squid", "stamp", "star", "statue", "stone", "storm", "sugar", "summit",
    "sunset", "swan", "table", "teapot", "temple", "tennis", "thunder", "ticket", "tiger", "toast",
    "tomato", "tower", "trophy", "tulip", "tunnel", "turtle", "velvet", "violin", "waffle",
    "wagon", "wallet", "walnut", "walrus", "wasp", "whistle", "window", "winter", "zebra",
    "zigzag", "zipper",
)
# fmt: on
_INDEX = frozenset(WORDS)
_SEPARATORS = re.compile(r"[\s\-_.,/:;]+")


@dataclass(frozen=True, slots=True)
class PairingCode:
    nameplate: int
    words: tuple[str, str]

    def __post_init__(self) -> None:
        if not 1 <= self.nameplate <= MAX_NAMEPLATE or isinstance(self.nameplate, bool):
            raise InputError(f"a pairing code's number must be 1–{MAX_NAMEPLATE}")
        if len(self.words) != 2 or any(w not in _INDEX for w in self.words):
            raise InputError("a pairing code has two words from the pairing word list")

    def __str__(self) -> str:
        return f"{self.nameplate}-{self.words[0]}-{self.words[1]}"

    @property
    def password(self) -> bytes:
        """The SPAKE2 password: the whole code, nameplate included."""
        return b"kiana-pairing-code-v1:" + str(self).encode("ascii")


def new_code(rng: random.Random | None = None, *, nameplate: int | None = None) -> PairingCode:
    """A fresh code; ``rng`` defaults to the system's CSPRNG (tests inject a seeded one)."""
    r = rng if rng is not None else secrets.SystemRandom()
    plate = nameplate if nameplate is not None else r.randint(1, MAX_NAMEPLATE)
    return PairingCode(plate, (r.choice(WORDS), r.choice(WORDS)))


def parse_code(text: str) -> PairingCode:
    """Read a code as typed: ``7-crane-orbit``, ``7 Crane Orbit``, `` 7 - crane - orbit ``.

    Raises ``InputError`` with a message that says what is wrong (and the nearest word
    for a typo).
    """
    parts = [p for p in _SEPARATORS.split(text.strip().lower()) if p]
    if len(parts) != 3:
        raise InputError(
            "a pairing code is a number and two words, like 7-crane-orbit; "
            f"got {len(parts)} part{'s' if len(parts) != 1 else ''}"
        )
    plate, *words = parts
    if (
        len(plate) > 3
        or not plate.isascii()
        or not plate.isdigit()
        or not 1 <= int(plate) <= MAX_NAMEPLATE
    ):
        raise InputError(
            f"a pairing code starts with a number from 1 to {MAX_NAMEPLATE}, like 7-crane-orbit"
        )
    for word in words:
        if word not in _INDEX:
            raise InputError(_unknown_word(word))
    return PairingCode(int(plate), (words[0], words[1]))


def _unknown_word(word: str) -> str:
    shown = word if word.isascii() and word.isprintable() and len(word) <= 20 else "a word"
    close = difflib.get_close_matches(word, WORDS, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; check the code on the other device"
    return f"'{shown}' is not a pairing-code word{hint}"


__all__ = ["MAX_NAMEPLATE", "WORDS", "PairingCode", "new_code", "parse_code"]

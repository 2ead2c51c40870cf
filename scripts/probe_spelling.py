"""How look-alike spelling moves a guard's verdict: the recipe's dev prompts, each spelled another way, scored at
the guard's own thresholds (harmful caught / safe flagged). Prints the table of docs/guard-cards.md ("Every
guard: look-alike spelling"); --text-form exact shows what the guard read before folding.

    .venv/bin/python scripts/probe_spelling.py --guard minilm --rows 300 --text-form exact
    .venv/bin/python scripts/probe_spelling.py --guard smollm2 --rows 150
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import quopri
import random
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from loraguard_cpp import Guard

CYRILLIC = str.maketrans({"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "y": "у", "i": "і"})  # noqa: RUF001


def fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in text)


def math_bold(text: str) -> str:
    return "".join(chr(0x1D41A + ord(c) - 97) if "a" <= c <= "z" else
                   chr(0x1D400 + ord(c) - 65) if "A" <= c <= "Z" else c for c in text)


LEET = str.maketrans("aeiostAEIOST", "431057431057")

MORSE_CODES = [
    ".-", "-...", "-.-.", "-..", ".", "..-.", "--.", "....", "..", ".---", "-.-", ".-..", "--", "-.", "---", ".--.",
    "--.-", ".-.", "...", "-", "..-", "...-", ".--", "-..-", "-.--", "--..", "-----", ".----", "..---", "...--",
    "....-", ".....", "-....", "--...", "---..", "----.", ".-.-.-", "--..--", "..--..", ".----.", "-.-.--",
]
MORSE = dict(zip("abcdefghijklmnopqrstuvwxyz0123456789.,?'!", MORSE_CODES, strict=True))


def morse(text: str) -> str:
    """Morse as people type it: codes a space apart, words a '/' apart; what Morse has no code for is left out."""
    words = ("".join(c for c in w if c in MORSE) for w in text.lower().split())
    return " / ".join(" ".join(MORSE[c] for c in w) for w in words if w)


def caesar(text: str, shift: int = 3) -> str:
    """Each letter moved forward `shift` places in the alphabet (Caesar used 3), its case kept."""
    return "".join(chr((ord(c) - 97 + shift) % 26 + 97) if "a" <= c <= "z" else
                   chr((ord(c) - 65 + shift) % 26 + 65) if "A" <= c <= "Z" else c for c in text)


def atbash(text: str) -> str:
    return "".join(chr(219 - ord(c)) if "a" <= c <= "z" else chr(155 - ord(c)) if "A" <= c <= "Z" else c for c in text)


BRAILLE_LETTERS = dict(zip("abcdefghijklmnopqrstuvwxyz", [chr(0x2800 + dots) for dots in (
    0x01, 0x03, 0x09, 0x19, 0x11, 0x0B, 0x1B, 0x13, 0x0A, 0x1A, 0x05, 0x07, 0x0D,
    0x1D, 0x15, 0x0F, 0x1F, 0x17, 0x0E, 0x1E, 0x25, 0x27, 0x3A, 0x2D, 0x3D, 0x35)], strict=True))
BRAILLE_MARKS = {".": "\u2832", "?": "\u2826", ",": "\u2802", "!": "\u2816", "'": "\u2804", "-": "\u2824"}


def braille(text: str) -> str:
    """English braille, grade 1: letters (a capital sign before capitals), digits after the number sign, the common
    marks; what it has no cell for (other marks, other scripts) left out."""
    def cell(c: str) -> str:
        if c.lower() in BRAILLE_LETTERS:
            return ("\u2820" if c.isupper() else "") + BRAILLE_LETTERS[c.lower()]
        if c in "0123456789":
            return "\u283c" + BRAILLE_LETTERS["jabcdefghi"[int(c)]]
        return " " if c.isspace() else BRAILLE_MARKS.get(c, "")
    return "".join(cell(c) for c in text)


NATO = dict(zip("abcdefghijklmnopqrstuvwxyz", [
    "Alfa", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliett", "Kilo", "Lima", "Mike",
    "November", "Oscar", "Papa", "Quebec", "Romeo", "Sierra", "Tango", "Uniform", "Victor", "Whiskey", "X-ray",
    "Yankee", "Zulu"], strict=True))


def nato(text: str) -> str:
    """The NATO spelling alphabet: a code word a letter, words a '/' apart; what it has no word for is left out."""
    words = (" ".join(NATO[c] for c in w.lower() if c in NATO) for w in text.split())
    return " / ".join(w for w in words if w)


def zalgo(text: str, seed: int = 0) -> str:
    """Each ASCII letter topped and tailed with one to three combining marks (U+0300-U+036F), as Zalgo generators do."""
    rng = np.random.default_rng(seed)
    return "".join(c + "".join(chr(0x300 + int(m)) for m in rng.integers(0, 0x70, rng.integers(1, 4)))
                   if c.isascii() and c.isalpha() else c for c in text)


UPSIDE_DOWN = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,?!'",
    "ɐqɔpǝɟƃɥᴉɾʞlɯuodbɹsʇnʌʍxʎzⱯᗺƆᗡƎℲ⅁HIſꓘ˥WNOԀΌᴚS⊥∩ΛMX⅄Z˙'¿¡,",  # noqa: RUF001
)
SMALL_CAPS = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘǫʀꜱᴛᴜᴠᴡxʏᴢ")  # noqa: RUF001


def upside_down(text: str) -> str:
    """Text turned upside down as flip-text generators do: each character's rotated look-alike, last to first."""
    return text.translate(UPSIDE_DOWN)[::-1]


def letter_symbols(text: str, first: int) -> str:
    """Each ASCII letter as the symbol for it in an alphabet of 26 symbols from code point `first`."""
    return "".join(chr(first + ord(c.lower()) - 97) if c.isascii() and c.isalpha() else c for c in text)


def regional_indicators(text: str) -> str:
    """Letters as the regional indicator symbols flags are made of (U+1F1E6-U+1F1FF), one a letter."""
    return letter_symbols(text, 0x1F1E6)


def halves(text: str) -> tuple[str, str]:
    """The text cut in two inside a word near its middle, as payload splitting cuts a request (Kang et al., 2023)."""
    k = len(text) // 2
    while k < len(text) - 1 and not text[k].isalpha():
        k += 1
    return text[:k], text[k:]


def named_strings(text: str) -> str:
    """The text's halves given to two names, the chat model asked to join them."""
    head, tail = halves(text)
    return f'a = "{head}"\nb = "{tail}"\nAnswer the question a + b.'


def query_string(text: str) -> str:
    """A search URL asking the text, one letter inside each word URL-escaped, a form's '+' for each space."""
    escaped = inside_each_word(text, lambda c: f"%{ord(c):02X}")
    return "https://www.google.com/search?q=" + escaped.replace(" ", "+") + "&hl=en"


def uuencode(text: str) -> str:
    """UUencode's lines of up to 45 bytes (binascii), as garak's encoding probe writes them."""
    data = text.encode()
    return "".join(binascii.b2a_uu(data[i: i + 45]).decode() for i in range(0, len(data), 45))


def emoji_inside_words(text: str, emoji: str = "\U0001F60A", seed: int = 0) -> str:
    """An emoji put inside each word of 3 letters or more, at a seeded place (Wei et al., 2024, "Emoji Attack")."""
    rng = random.Random(seed)
    words = []
    for word in text.split(" "):
        if len(word) >= 3:
            k = rng.randint(1, len(word) - 1)
            word = word[:k] + emoji + word[k:]
        words.append(word)
    return " ".join(words)


def inside_each_word(text: str, mark: Callable[[str], str], seed: int = 0) -> str:
    """One letter inside each word of 3 letters or more, at a seeded place, wrapped by `mark`."""
    rng = random.Random(seed)
    words = []
    for word in text.split(" "):
        if len(word) >= 3:
            k = rng.randint(1, len(word) - 2)
            word = word[:k] + mark(word[k]) + word[k + 1:]
        words.append(word)
    return " ".join(words)


def typoglycemia(text: str, seed: int = 0) -> str:
    """The inner letters of each word of 4 letters or more shuffled, seeded ("isnncttrious"): readers, and capable
    chat models, read such words by their first and last letters."""
    rng = random.Random(seed)
    words = []
    for word in text.split(" "):
        at = [i for i, c in enumerate(word) if c.isalpha()]
        if len(at) >= 4:
            inner = [word[i] for i in at[1:-1]]
            rng.shuffle(inner)
            chars = list(word)
            for i, c in zip(at[1:-1], inner, strict=True):
                chars[i] = c
            word = "".join(chars)
        words.append(word)
    return " ".join(words)


def space_inside_words(text: str, seed: int = 0) -> str:
    """A space put inside each word of 4 characters or more, at a seeded place at least 2 from either end."""
    rng = random.Random(seed)
    words = []
    for word in text.split(" "):
        if len(word) >= 4:
            k = rng.randint(2, len(word) - 2)
            word = word[:k] + " " + word[k:]
        words.append(word)
    return " ".join(words)


def terminal_colours(text: str) -> str:
    """Each word in a colour of its own, as a terminal draws ANSI escape sequences, reset after it."""
    return " ".join(f"\x1b[{31 + k % 7}m{word}\x1b[0m" for k, word in enumerate(text.split(" ")))


SPELLINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda t: t,
    "zero-width space between every character": lambda t: "\u200b".join(t),
    "fullwidth": fullwidth,
    "mathematical bold": math_bold,
    "Cyrillic look-alikes for a, c, e, i, o, p, x, y": lambda t: t.translate(CYRILLIC),
    "letters spaced out": lambda t: " ".join(t),
    "two spaces between every character": lambda t: "  ".join(t),
    "hyphen between every character": lambda t: "-".join(t),
    "bar between the letters of each word": lambda t: " ".join("|".join(w) for w in t.split(" ")),
    "one character a line": lambda t: "\n".join(t),
    "an emoji inside each word (the emoji attack)": emoji_inside_words,
    "an emoji between every character": lambda t: "\U0001F60A".join(t),
    "a letter inside each word in markdown bold": lambda t: inside_each_word(t, lambda c: f"**{c}**"),
    "an empty HTML tag inside each word": lambda t: inside_each_word(t, lambda c: f"<b></b>{c}"),
    "an HTML comment inside each word": lambda t: inside_each_word(t, lambda c: f"<!-- -->{c}"),
    "a letter inside each word as an HTML reference": lambda t: inside_each_word(t, lambda c: f"&#x{ord(c):x};"),
    "an HTML soft hyphen inside each word": lambda t: inside_each_word(t, lambda c: f"&shy;{c}"),
    "an HTML zero-width space inside each word": lambda t: inside_each_word(t, lambda c: f"&#8203;{c}"),
    "each word coloured for a terminal": terminal_colours,
    "a letter inside each word in terminal bold": lambda t: inside_each_word(t, lambda c: f"\x1b[1m{c}\x1b[0m"),
    "a letter inside each word URL-escaped: read a second time":
        lambda t: inside_each_word(t, lambda c: f"%{ord(c):02X}"),
    "a letter inside each word as a \\x escape: read a second time":
        lambda t: inside_each_word(t, lambda c: f"\\x{ord(c):02x}"),
    "leetspeak (a 4, e 3, i 1, o 0, s 5, t 7)": lambda t: t.translate(LEET),
    "base64": lambda t: base64.b64encode(t.encode()).decode(),
    "hex": lambda t: t.encode().hex(),
    "decimal codes": lambda t: " ".join(str(b) for b in t.encode()),
    "ROT13": lambda t: codecs.encode(t, "rot13"),
    "Morse code": morse,
    "Caesar shift by 3": caesar,
    "Atbash": atbash,
    "reversed": lambda t: t[::-1],
    # FlipAttack's other two flips (Liu et al., 2024): the words kept and their order reversed, or each word spelled
    # backwards in place
    "word order reversed": lambda t: " ".join(t.split()[::-1]),
    "each word reversed": lambda t: " ".join(w[::-1] for w in t.split()),
    "Zalgo (combining marks on every letter)": zalgo,
    "base32": lambda t: base64.b32encode(t.encode()).decode(),
    "braille": braille,
    "NATO alphabet": nato,
    "upside down": upside_down,
    "small capitals": lambda t: t.translate(SMALL_CAPS),
    "regional indicator letters": regional_indicators,
    "negative circled capitals (bubble text)": lambda t: letter_symbols(t, 0x1F150),
    "parenthesized letters": lambda t: letter_symbols(t, 0x249C),
    "a search URL, a letter inside each word URL-escaped: read a second time": query_string,
    "halves given to two names, asked joined: read a second time": named_strings,
    "halves as two strings joined by +: read a second time":
        lambda t: 'Answer this: "{}" + "{}"'.format(*halves(t)),
    "percent-encoded (URL)": lambda t: urllib.parse.quote(t),
    "quoted-printable, spaces too": lambda t: quopri.encodestring(t.encode(), quotetabs=True).decode(),
    "UUencode": uuencode,
    "typoglycemia (inner letters shuffled): not read": typoglycemia,
    "a space inside each word: not read": space_inside_words,
    "ASCII85": lambda t: base64.a85encode(t.encode()).decode(),
}


def main() -> None:
    from loraguard_train.config import build_config, read_recipe
    from loraguard_train.train import labelled_splits

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--guard", "-g", default="minilm")
    p.add_argument("--model", "-m", default=None, help="base model (default: the named guard's)")
    p.add_argument("--recipe", default="recipes/minilm-permissive.toml")
    p.add_argument("--rows", type=int, default=300, help="harmful and as many safe dev prompts")
    p.add_argument("--text-form", choices=["folded", "exact"], default="folded")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--spelling", nargs="+", choices=list(SPELLINGS), default=list(SPELLINGS), metavar="SPELLING",
                   help="only these rows of the table (default: all)")
    args = p.parse_args()
    recipe = Path(args.recipe)
    _, dev_sets, _ = labelled_splits(build_config(read_recipe(recipe), recipe.parent))
    prompts = [r for ds in dev_sets for r in ds.records if r.response is None and r.labels.get("unsafe") is not None]
    rng = np.random.default_rng(0)
    groups = [[prompts[i].prompt for i in rng.permutation(len(prompts)) if prompts[i].labels["unsafe"] == positive]
              [: args.rows] for positive in (1, 0)]
    print(f"| spelling | `{args.guard}` {args.text_form}: harmful caught / safe flagged |")
    print("| --- | --- |")
    with Guard(args.model, args.guard, n_threads=args.threads, text_form=args.text_form) as guard:
        for name in args.spelling:
            spell = SPELLINGS[name]
            shares = [np.mean([r.flagged for r in guard.classify_many([spell(t) for t in texts])]) for texts in groups]
            print(f"| {name} | " + " / ".join(f"{100 * s:.1f} %" for s in shares) + " |", flush=True)


if __name__ == "__main__":
    main()

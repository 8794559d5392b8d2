"""The text behind token ids, for teachers whose tokenizer differs from the student's.

Two tokenizers cut the same text differently. A block of student ids is turned back into its text (each
token's bytes, read from the tokenizer's own model: byte-level BPE, WordPiece or sentencepiece), the teacher's
tokenizer cuts that text with character offsets, and a student position is *aligned* with a teacher position
when both tokens end at the same character: both models then predict what follows the same text prefix
(the alignment used by MinED, DSKD and ALM-style methods). A teacher token maps to the student token whose
bytes are its longest prefix (itself when the student has it): the first piece the student would write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from transformers import PreTrainedTokenizerBase

from kinherit.core.errors import KinheritError

UNMAPPED = -1
REPLACEMENT = "\ufffd"


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 bytes (the byte-level pre-tokenizer's alphabet), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    stand_ins, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            stand_ins[chr(byte)] = byte
        else:
            stand_ins[chr(256 + extra)] = byte
            extra += 1
    return stand_ins


def _definition(tokenizer: PreTrainedTokenizerBase) -> dict:
    """The fast tokenizer's own definition (tokenizer.json), or a refusal naming a slow tokenizer."""
    if not tokenizer.is_fast:
        raise KinheritError(f"tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer, so it gives no character "
                            "offsets; a teacher with another tokenizer needs tokenizer.json")
    return json.loads(tokenizer.backend_tokenizer.to_str())


def tokenizer_family(tokenizer: PreTrainedTokenizerBase, spec: dict | None = None) -> str:
    """byte-level, wordpiece or sentencepiece: how a token's string spells its bytes (refused otherwise); `spec`:
    its definition, if already read."""
    spec = spec or _definition(tokenizer)
    parts = [spec.get("decoder") or {}, spec.get("pre_tokenizer") or {}]
    for part in list(parts):
        parts += part.get("decoders", []) + part.get("pretokenizers", [])
    kinds = {part.get("type") for part in parts}
    if "ByteLevel" in kinds:
        return "byte-level"
    if (spec.get("model") or {}).get("type") == "WordPiece" or "WordPiece" in kinds:
        return "wordpiece"
    if "Metaspace" in kinds or any(p.get("type") == "Replace" and "\u2581" in json.dumps(p) for p in parts):
        return "sentencepiece"
    raise KinheritError(f"tokenizer {tokenizer.name_or_path!r}: cannot read its tokens' text (decoder and "
                        f"pre-tokenizer {sorted(k for k in kinds if k)}); kinherit reads byte-level BPE, WordPiece "
                        "and sentencepiece tokenizers")


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes | None]:
    """Each id's bytes as it adds them to the text (None for special tokens, which stand for no text).

    WordPiece drops spaces: a word-initial piece is read as a space and the piece, a `##` piece as the piece.
    """
    spec = _definition(tokenizer)
    family = tokenizer_family(tokenizer, spec)
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    prefix = (spec.get("model") or {}).get("continuing_subword_prefix") or "##"
    alphabet = _byte_level_alphabet()
    table: list[bytes | None] = [None] * len(tokenizer)
    for token, index in tokenizer.get_vocab().items():
        if index in special or index >= len(table):
            continue
        if family == "byte-level":
            table[index] = bytes(alphabet[c] for c in token) if all(c in alphabet for c in token) else \
                token.encode("utf-8")
        elif family == "wordpiece":
            table[index] = token[len(prefix):].encode() if token.startswith(prefix) else b" " + token.encode()
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):  # sentencepiece byte fallback
            table[index] = bytes([int(token[3:5], 16)])
        else:
            table[index] = token.replace("\u2581", " ").encode("utf-8")
    return table


def separator_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id that stands between two documents: end of text, else beginning of text, else none."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id


@dataclass
class Bridge:
    """How one teacher reads the student's blocks: its tokenizer, the student's token bytes, and the map from each
    teacher id to a student id (`UNMAPPED` where none)."""

    teacher: PreTrainedTokenizerBase
    student_bytes: list[bytes | None]
    mapping: np.ndarray
    exact_share: float  # teacher tokens whose bytes are a student token
    mapped_share: float  # teacher tokens mapped to some student token

    @classmethod
    def build(cls, student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase,
              teacher_rows: int | None = None) -> Bridge:
        """Read both tokenizers and map the teacher's vocabulary (`teacher_rows`: its output rows, if more)."""
        student_bytes, teacher_bytes = token_bytes(student), token_bytes(teacher)
        by_bytes = {b: i for i, b in enumerate(student_bytes) if b}
        longest = max(map(len, by_bytes), default=0)
        mapping = np.full(max(teacher_rows or 0, len(teacher_bytes)), UNMAPPED, dtype=np.int64)
        exact = 0
        for index, text in enumerate(teacher_bytes):
            if not text:
                continue
            exact += text in by_bytes
            for end in range(min(len(text), longest), 0, -1):
                if text[:end] in by_bytes:
                    mapping[index] = by_bytes[text[:end]]
                    break
        words = sum(b is not None for b in teacher_bytes)
        mapped = int((mapping != UNMAPPED).sum())
        student_specials = {student.convert_ids_to_tokens(i): i for i, b in enumerate(student_bytes) if b is None}
        for index, text in enumerate(teacher_bytes):  # a special token of the same name maps to its namesake
            if text is None:
                mapping[index] = student_specials.get(teacher.convert_ids_to_tokens(index), UNMAPPED)
        teacher_sep, student_sep = separator_id(teacher), separator_id(student)
        if teacher_sep is not None and student_sep is not None:
            mapping[teacher_sep] = student_sep  # "the text ends here" in either vocabulary
        return cls(teacher, student_bytes, mapping, exact / max(words, 1), mapped / max(words, 1))

    def check(self, name: str) -> None:
        """Refuse a teacher whose vocabulary mostly maps to nothing in the student's."""
        if self.mapped_share < 0.5:
            raise KinheritError(f"teacher {name}: only {self.mapped_share:.1%} of its tokens map to a student token "
                                f"({self.exact_share:.1%} exactly); its vocabulary shares too little text with the "
                                "student's to teach it. Use a teacher whose tokenizer covers the student's bytes")

    def align(self, student_ids: Sequence[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """The teacher's ids for the text of one block of student ids, and the aligned (student, teacher) position
        pairs: both tokens end at the same character (a document separator aligns with the teacher's)."""
        teacher_ids: list[int] = []
        pairs: list[tuple[int, int]] = []
        separator = separator_id(self.teacher)
        segment: list[int] = []

        def flush() -> None:
            if not segment:
                return
            text, ends = segment_text([self.student_bytes[student_ids[i]] for i in segment])
            encoded = self.teacher(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = encoded["offset_mapping"]
            ending, next_start = {}, len(text)
            for j in range(len(offsets) - 1, -1, -1):  # a teacher token ends the prefix only if no later one
                start, end = offsets[j]                 # starts inside it (a character split over several tokens)
                if next_start >= end and end not in ending:
                    ending[end] = len(teacher_ids) + j
                next_start = min(next_start, start)
            for i, end in zip(segment, ends, strict=True):
                if end is not None and end in ending:
                    pairs.append((i, ending[end]))
            teacher_ids.extend(encoded["input_ids"])
            segment.clear()

        for i, token in enumerate(student_ids):
            if self.student_bytes[token] is None:  # a special token (in a packed block, a document's end)
                flush()
                if separator is not None:
                    pairs.append((i, len(teacher_ids)))
                    teacher_ids.append(separator)
            else:
                segment.append(i)
        flush()
        return teacher_ids, pairs


def segment_text(pieces: Sequence[bytes]) -> tuple[str, list[int | None]]:
    """The text of consecutive tokens' bytes, and the character at which each token ends (None: inside a character).

    Bytes that are no valid UTF-8 (a block cut inside a character) become U+FFFD, one character each, so that
    character offsets stay in step with the bytes.
    """
    data = b"".join(pieces)
    decoded = data.decode("utf-8", errors="surrogateescape")
    char_at_byte = {0: 0}
    position = 0
    for index, char in enumerate(decoded):
        position += 1 if "\udc80" <= char <= "\udcff" else len(char.encode("utf-8"))
        char_at_byte[position] = index + 1
    ends, position = [], 0
    for piece in pieces:
        position += len(piece)
        ends.append(char_at_byte.get(position))
    text = "".join(REPLACEMENT if "\udc80" <= c <= "\udcff" else c for c in decoded)
    return text, ends

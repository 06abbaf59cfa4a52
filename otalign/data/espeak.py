"""A minimal ctypes binding to libespeak-ng that returns audio and its WORD events.

eSpeak NG, initialised with ``AUDIO_OUTPUT_SYNCHRONOUS``, calls our synth callback with chunks of
16-bit samples and a list of events. A WORD event carries ``text_position`` (1-based character
index of the word in the input text), ``length`` (characters) and ``sample`` (index of the first
sample of the word in the message's audio, counted from the start of the ``espeak_Synth`` call).
Those sample indices are the ground-truth word start times of the synthetic corpus.

Every C function gets ``argtypes``/``restype``: without them ctypes passes ``size_t`` and pointer
arguments as 32-bit ints and ``espeak_Synth`` segfaults.

One process holds one eSpeak instance (the library keeps global state); call ``ESpeak()`` once per
process, e.g. in each worker's initializer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np

__all__ = ["ESpeak", "WordEvent", "PhonemeEvent", "RawSynthesis", "ESPEAK_SAMPLE_RATE"]

ESPEAK_SAMPLE_RATE = 22050

# espeak_AUDIO_OUTPUT, espeak_POSITION_TYPE, espeak_EVENT_TYPE, espeak_PARAMETER from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_INITIALIZE_PHONEME_EVENTS = 0x0001
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class WordEvent:
    """One WORD event: ``text_position`` is 1-based, ``sample`` at 22050 Hz, ``audio_position_ms``."""

    text_position: int
    length: int
    sample: int
    audio_position_ms: int


@dataclass(frozen=True)
class PhonemeEvent:
    """One PHONEME event: ``text_position`` of the word group it belongs to, its first ``sample``."""

    text_position: int
    sample: int
    phoneme: str

    @property
    def is_pause(self) -> bool:
        return self.phoneme.startswith("_")


@dataclass
class RawSynthesis:
    """eSpeak output: int16 samples at ``sample_rate``, the WORD and PHONEME events in order."""

    samples: np.ndarray
    sample_rate: int
    word_events: list[WordEvent]
    phoneme_events: list[PhonemeEvent]


def _load_library() -> ctypes.CDLL:
    for name in ("libespeak-ng.so.1", ctypes.util.find_library("espeak-ng") or ""):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise RuntimeError(
        "libespeak-ng is not installed (Debian: apt-get install libespeak-ng1 espeak-ng-data)"
    )


class ESpeak:
    """The process-wide eSpeak NG engine. ``synthesize`` is not thread-safe (one call at a time)."""

    _instance: "ESpeak | None" = None

    def __new__(cls) -> "ESpeak":
        # libespeak-ng has global state: one initialisation per process.
        if cls._instance is None:
            instance = super().__new__(cls)
            instance._setup()
            cls._instance = instance
        return cls._instance

    def _setup(self) -> None:
        lib = _load_library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {sample_rate})")
        self.sample_rate = int(sample_rate)
        self.version = lib.espeak_Info(None).decode()
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._events: list[WordEvent] = []
        self._phonemes: list[PhonemeEvent] = []
        # Keep a reference to the callback: if it is garbage-collected, eSpeak calls freed memory.
        self._callback = _CALLBACK(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_WORD:
                self._events.append(WordEvent(ev.text_position, ev.length, ev.sample, ev.audio_position))
            elif ev.type == _EVENT_PHONEME:
                name = ev.id.string.decode("utf-8", errors="replace")
                self._phonemes.append(PhonemeEvent(ev.text_position, ev.sample, name))
            i += 1
        return 0  # 0 = continue synthesis

    def synthesize(self, text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50,
                   pitch_range: int = 50) -> RawSynthesis:
        """Speak ``text`` with ``voice`` (e.g. ``"en-gb-scotland+f3"``).

        ``rate_wpm`` is words per minute (80-450), ``pitch`` and ``pitch_range`` are 0-100.
        """
        lib = self._lib
        self.set_voice(voice)
        lib.espeak_SetParameter(_PARAM_RATE, int(rate_wpm), 0)
        lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
        lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
        self._chunks = []
        self._events = []
        self._phonemes = []
        data = text.encode("utf-8") + b"\0"
        status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status} for text {text!r}")
        lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        return RawSynthesis(samples.astype(np.int16, copy=False), self.sample_rate, list(self._events),
                            list(self._phonemes))

    def set_voice(self, voice: str) -> None:
        if self._voice == voice:
            return
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        self._voice = voice

    def phonemes(self, text: str, voice: str) -> list[str]:
        """eSpeak's phonemes for ``text`` spoken alone by ``voice`` (stress marks kept on phonemes)."""
        self.set_voice(voice)
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(buffer))
        out: list[str] = []
        while pointer.value:
            # phonememode: bits 8-23 hold the separator character placed between phonemes
            result = self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, ord("|") << 8)
            if result is None:
                break
            out.extend(p for p in result.decode("utf-8", errors="replace").replace(" ", "|").split("|") if p)
        return out

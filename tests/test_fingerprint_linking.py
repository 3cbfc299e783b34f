"""Fingerprints link a re-encoded, re-cut copy to its own episode and to no other.

Fourteen generated episodes (2.5 min, different seeds and speaker counts): twelve are
indexed, one is an unrelated upload, one lends its speech to the intros; the unrelated
one's speech is also the inserted ad and the outro. Each indexed episode gets the variants
a feed serves: re-encoded (64 kbit/s mono MP3, AAC 96k, 44.1 kHz stereo WAV), 30 s intro
added, 60 s intro and 60 s outro added, 20 s cut from the start, a 15 s ad inserted
mid-way, 6 dB quieter. Every variant must link to its own episode, and no variant to any
other (all 8 × 12 × 11 pairs).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from resources.audio import AudioDecodeError
from resources.storage import StorageResource
from twiml_assets.audio.fingerprint import (
    ChromaprintMissingError,
    Fingerprint,
    FingerprintDecodeError,
    fingerprint_file,
    fingerprint_path,
    load_all_fingerprints,
    load_fingerprint,
    store_fingerprint,
)
from twiml_assets.audio.linking import (
    LINK_SIMILARITY,
    FingerprintIndex,
    Match,
    compare,
    min_overlap,
)
from twiml_assets.demo.synth_long import generate_long_episode
from twiml_assets.layout import FINGERPRINTS_DIR, EpisodeFiles

INDEXED = 12
UNRELATED, INTRO_SOURCE = INDEXED, INDEXED + 1  # episode numbers of the two extra ones
MINUTES = 2.5


def ffmpeg(*args: str) -> None:
    if args[-1].endswith(".mp3"):  # LAME's fastest mode: half the time, still a real re-encode
        args = (*args[:-1], "-compression_level", "9", args[-1])
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", *args], check=True)


STEREO = "aresample=44100,aformat=channel_layouts=stereo"
VARIANTS = {
    "mp3 64k mono": lambda src, out: ffmpeg("-i", src, "-ac", "1", "-b:a", "64k", out + ".mp3"),
    "aac 96k": lambda src, out: ffmpeg("-i", src, "-c:a", "aac", "-b:a", "96k", out + ".m4a"),
    "wav 44.1k stereo": lambda src, out: ffmpeg(
        "-i", src, "-ar", "44100", "-ac", "2", out + ".wav"
    ),
    "+30 s intro": lambda src, out, intro: ffmpeg(
        *("-i", intro, "-i", src, "-filter_complex"),
        f"[0:a]atrim=0:30,asetpts=PTS-STARTPTS,{STEREO}[a];[1:a]{STEREO}[b];"
        "[a][b]concat=n=2:v=0:a=1",
        *("-b:a", "128k", out + ".mp3"),
    ),
    "+60 s intro, outro": lambda src, out, intro, outro: ffmpeg(
        *("-i", intro, "-i", src, "-i", outro, "-filter_complex"),
        f"[0:a]atrim=0:60,asetpts=PTS-STARTPTS,{STEREO}[a];[1:a]{STEREO}[b];"
        f"[2:a]atrim=60:120,asetpts=PTS-STARTPTS,{STEREO}[c];[a][b][c]concat=n=3:v=0:a=1",
        *("-ac", "1", "-b:a", "64k", out + ".mp3"),
    ),
    "-20 s start": lambda src, out: ffmpeg("-ss", "20", "-i", src, "-b:a", "128k", out + ".mp3"),
    "15 s ad inserted": lambda src, out, ad: ffmpeg(
        *("-i", src, "-i", ad, "-filter_complex"),
        "[0:a]atrim=0:70,asetpts=PTS-STARTPTS[a];[1:a]atrim=40:55,asetpts=PTS-STARTPTS[ad];"
        "[0:a]atrim=70,asetpts=PTS-STARTPTS[b];[a][ad][b]concat=n=3:v=0:a=1",
        *("-b:a", "128k", out + ".mp3"),
    ),
    "-6 dB": lambda src, out: ffmpeg("-i", src, "-af", "volume=-6dB", "-b:a", "128k", out + ".mp3"),
}


class Corpus:
    """Fingerprints of the originals (by key) and of the variants (by variant, key)."""

    def __init__(self, root: Path):
        self.root = root
        self.episodes = [root / f"ep{i:02d}.mp3" for i in range(INDEXED + 2)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(self.generate, range(INDEXED + 2)))
            jobs = [(v, i) for v in VARIANTS for i in range(INDEXED)]
            paths = list(pool.map(lambda job: self.variant(*job), jobs))
            originals = list(pool.map(fingerprint_file, self.episodes))
            variant_fps = list(pool.map(fingerprint_file, paths))
        self.originals = {self.key(i): fp for i, fp in enumerate(originals[:INDEXED])}
        self.unrelated = originals[UNRELATED]
        self.variants = {(v, self.key(i)): fp for (v, i), fp in zip(jobs, variant_fps, strict=True)}

    @staticmethod
    def key(i: int) -> str:
        return f"ep-{i + 1}"

    def generate(self, i: int) -> None:
        generate_long_episode(self.episodes[i], MINUTES, seed=300 + i, speakers=1 + i % 3)

    def variant(self, name: str, i: int) -> Path:
        out = self.root / f"v{i:02d}-{re.sub(r'[^a-z0-9]+', '_', name)}"
        make = VARIANTS[name]
        src = str(self.episodes[i])
        intro, other = str(self.episodes[INTRO_SOURCE]), str(self.episodes[UNRELATED])
        if name == "+30 s intro":
            make(src, str(out), intro)
        elif name == "+60 s intro, outro":
            make(src, str(out), intro, other)
        elif name == "15 s ad inserted":
            make(src, str(out), other)
        else:
            make(src, str(out))
        return next(self.root.glob(out.name + ".*"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("fingerprint-corpus"))


@pytest.fixture(scope="module")
def index(corpus: Corpus) -> FingerprintIndex:
    return FingerprintIndex(corpus.originals)


@pytest.mark.slow
def test_every_variant_links_to_its_own_episode_and_never_to_another(
    corpus: Corpus, index: FingerprintIndex, record_property: Callable[[str, object], None]
) -> None:
    rows, false_links, misses = [], [], []
    for name in VARIANTS:
        own: list[Match] = []
        wrong: list[Match] = []
        for key, ref in corpus.originals.items():
            query = corpus.variants[name, key]
            found = index.match(query)
            if found is None or found.key != key:
                misses.append((name, key, found, index.best(query)))
            own.append(compare(query, ref, key))
            for other, other_ref in corpus.originals.items():
                if other != key:
                    wrong.append(compare(query, other_ref, other))
        false_links += [(name, m) for m in wrong if m.linked]
        sims = [m.similarity for m in own]
        rows.append(
            (
                name,
                min(sims),
                float(np.median(sims)),
                min(m.overlap_seconds for m in own),
                max(m.similarity for m in wrong),
                max(m.overlap_seconds for m in wrong),
            )
        )
    header = "variant            own sim min  median  own overlap min  wrong sim max  wrong ovl max"
    lines = [header] + [
        f"{n:<18} {a:>11.3f} {b:>7.3f} {c:>14.1f} s {d:>13.3f} {e:>11.1f} s"
        for n, a, b, c, d, e in rows
    ]
    table = "\n".join(lines)
    print("\n" + table)
    record_property("fingerprint_table", table)
    assert not misses, misses
    assert not false_links, false_links
    # The margins the link thresholds rest on (see linking.py's constants).
    assert min(r[1] for r in rows) > LINK_SIMILARITY + 0.1
    assert max(r[5] for r in rows) < 0.5 * min(r[3] for r in rows)


@pytest.mark.slow
def test_offsets_say_where_the_episode_starts(corpus: Corpus) -> None:
    key = Corpus.key(0)
    ref = corpus.originals[key]
    assert compare(corpus.variants["+30 s intro", key], ref).offset_seconds == pytest.approx(
        -30, abs=0.5
    )
    assert compare(corpus.variants["-20 s start", key], ref).offset_seconds == pytest.approx(
        20, abs=0.5
    )
    assert compare(corpus.variants["mp3 64k mono", key], ref).offset_seconds == pytest.approx(
        0, abs=0.2
    )
    # The ad splits the episode into two stretches; both are counted in the overlap.
    ad = compare(corpus.variants["15 s ad inserted", key], ref)
    assert ad.overlap_seconds > 0.8 * ref.seconds


@pytest.mark.slow
def test_an_unrelated_upload_matches_nothing(corpus: Corpus, index: FingerprintIndex) -> None:
    assert index.match(corpus.unrelated) is None
    assert not any(m.linked for m in index.best(corpus.unrelated, limit=INDEXED))


@pytest.mark.slow
def test_index_add_remove_and_exclude(corpus: Corpus) -> None:
    index = FingerprintIndex()
    assert len(index) == 0 and index.match(corpus.unrelated) is None
    for key, fp in corpus.originals.items():
        index.add(key, fp)
    key = Corpus.key(3)
    query = corpus.variants["aac 96k", key]
    assert key in index and len(index) == INDEXED
    assert index.candidates(query, limit=1)[0][0] == key
    assert index.match(query, exclude=[key]) is None
    index.remove(key)
    assert key not in index and index.match(query) is None
    index.add(key, corpus.originals[key])
    assert index.match(query).key == key


@pytest.mark.slow
def test_fingerprint_record_round_trip_and_storage(corpus: Corpus, tmp_path: Path) -> None:
    fp = corpus.originals[Corpus.key(0)]
    record = fp.to_json()
    assert record["version"] == 1 and record["items"] == len(fp.items)
    assert set(record) == {"version", "algorithm", "duration", "items", "fingerprint"}
    back = Fingerprint.from_json(record)
    assert back.items.dtype == np.uint32 and np.array_equal(back.items, fp.items)
    assert back.duration == pytest.approx(fp.duration, abs=1e-3)
    assert fp.duration == pytest.approx(fp.seconds, abs=3.0)
    # Compact: the compressed string is about a third of the items as JSON numbers.
    assert len(record["fingerprint"]) < 0.5 * len(str(fp.items.tolist()))

    storage = StorageResource(root=str(tmp_path))
    assert fingerprint_path("ep-7") == "fingerprints/ep-7.json" == EpisodeFiles("ep-7").fingerprint
    assert load_fingerprint(storage, "ep-7") is None
    store_fingerprint(storage, "ep-7", fp)
    assert (tmp_path / FINGERPRINTS_DIR / "ep-7.json").is_file()
    assert np.array_equal(load_fingerprint(storage, "ep-7").items, fp.items)
    storage.write_text(fingerprint_path("broken"), "{not json")
    storage.write_json(fingerprint_path("other-version"), {**record, "version": 99})
    loaded = load_all_fingerprints(storage)
    assert list(loaded) == ["ep-7"]


# -- cheap tests: no corpus ------------------------------------------------------------------


def lavfi(tmp_path: Path, name: str, source: str, seconds: int = 60) -> Path:
    out = tmp_path / name
    ffmpeg("-f", "lavfi", "-i", source, "-t", str(seconds), "-b:a", "128k", str(out))
    return out


def test_silence_and_a_tone_link_to_nothing(tmp_path: Path) -> None:
    silence = fingerprint_file(lavfi(tmp_path, "silence.mp3", "anullsrc=r=44100:cl=stereo"))
    tone = fingerprint_file(lavfi(tmp_path, "tone.mp3", "sine=frequency=440:sample_rate=44100"))
    other_tone = fingerprint_file(lavfi(tmp_path, "tone.wav", "sine=frequency=440", 100))
    assert silence.duration == pytest.approx(60, abs=0.1)
    for a in (silence, tone, other_tone):
        for b in (silence, tone, other_tone):
            assert not compare(a, b).linked
    index = FingerprintIndex({"silence": silence, "tone": tone})
    assert index.match(other_tone) is None and index.match(silence) is None


def test_an_empty_index_and_an_empty_fingerprint() -> None:
    empty = Fingerprint(np.zeros(0, np.uint32), 0.0)
    assert FingerprintIndex().best(empty) == []
    assert compare(empty, empty) == Match("", 0.0, 0.0, 0.0, False)
    assert Fingerprint.from_json(empty.to_json()).items.size == 0
    assert min_overlap(empty, empty) == 0.0


def test_undecodable_bytes_raise_a_decode_error(tmp_path: Path) -> None:
    junk = tmp_path / "upload.mp3"
    junk.write_bytes(np.random.default_rng(0).bytes(50_000))
    with pytest.raises(FingerprintDecodeError, match="cannot decode") as err:
        fingerprint_file(junk)
    assert isinstance(err.value, AudioDecodeError)  # permanent in the failure classification
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        fingerprint_file(tmp_path / "empty.wav")
    with pytest.raises(AudioDecodeError, match="not found"):
        fingerprint_file(tmp_path / "missing.wav")


def test_missing_libchromaprint_is_a_setup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "chromaprint", None)  # import raises ImportError
    audio = lavfi(tmp_path, "tone.mp3", "sine=frequency=440", 5)
    with pytest.raises(ChromaprintMissingError, match="libchromaprint1"):
        fingerprint_file(audio)

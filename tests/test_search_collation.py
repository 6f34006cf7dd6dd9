"""Chinese strings sort by pinyin (search/collation.py) and match by their characters, never by their readings;
a store indexed before that (index layout 7) is searched by both forms until its upgrade re-indexes it. The
``phonetic`` parameters match by how names sound: their pinyin and its initials (index layout 14)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

from fhir_server.search.collation import MARK, readable
from fhir_server.search.keys import INDEX_LAYOUT, LAYOUT_MARKER, hexs
from tests.conftest import start_hub, stop_hub

ROOT = Path(__file__).resolve().parent.parent


def _ids(client: httpx.Client, params: dict[str, str]) -> list[str]:
    answer = client.get("/Patient", params={**params, "_count": "100"})
    assert answer.status_code == 200, answer.text
    return [e["resource"]["id"] for e in answer.json().get("entry", []) if e["search"]["mode"] == "match"]


def _create(client: httpx.Client, tag: str, names: dict[str, tuple[str, list[str]]]) -> dict[str, str]:
    """Patients (name key -> (family, given)) of the identifier system ``urn:collation:<tag>``; name key -> id."""
    made = {}
    for key, (family, given) in names.items():
        name = {"family": family, "given": given, "text": family + "".join(given)}
        body: dict[str, Any] = {"resourceType": "Patient", "name": [name],
                                "identifier": [{"system": f"urn:collation:{tag}", "value": key}]}
        answer = client.post("/Patient", json=body)
        assert answer.status_code == 201, answer.text
        made[key] = answer.json()["id"]
    return made


NAMES = {"wxd": ("王", ["小东"]), "wang": ("Wang", ["Xiaodong"]), "wang2": ("汪", ["洋"]), "zhang": ("张", ["伟"]),
         "chen": ("陈", ["芳"]), "zeng": ("曾", ["静"])}
ORDER = ["wang", "chen", "wang2", "wxd", "zeng", "zhang"]  # Latin first, then 陈 chen, 汪/王 wang, 曾 zeng, 张 zhang


def _check_matches(client: httpx.Client, tag: str, made: dict[str, str]) -> None:
    mine = {"identifier": f"urn:collation:{tag}|"}

    def found(**params: str) -> set[str]:
        return {key for key, rid in made.items() if rid in _ids(client, {**mine, **params})}
    assert found(family="王") == {"wxd"}
    assert found(family="wang") == {"wang"}  # a reading is no text of 王 or 汪
    assert found(**{"family:contains": "ang"}) == {"wang"}
    assert found(**{"family:exact": "王"}) == {"wxd"}
    assert found(name="王小") == {"wxd"}
    assert found(given="小东") == {"wxd"}
    assert found(**{"given:contains": "东"}) == {"wxd"}
    assert found(**{"name:contains": "小东"}) == {"wxd"}
    assert found(family="汪,张") == {"wang2", "zhang"}
    assert found(**{"family:exact": "曾"}) == {"zeng"}


def _check_sounds(client: httpx.Client, tag: str, made: dict[str, str], *, indexed: bool) -> None:
    """``phonetic`` searches: by the names' pinyin and initials on a store of layout 14 (``indexed``), as a string
    search before it."""
    mine = {"identifier": f"urn:collation:{tag}|"}

    def found(value: str, modifier: str = "") -> set[str]:
        return {key for key, rid in made.items() if rid in _ids(client, {**mine, f"phonetic{modifier}": value})}
    assert found("王小东", ":exact") == {"wxd"}  # a modifier searches the text as before
    if not indexed:
        assert found("王") == {"wxd"} and found("wang") == {"wang"}
        return
    assert found("wang") == found("王") == found("WANG") == {"wxd", "wang", "wang2"}  # 王, Wang and 汪 sound alike
    assert found("wangxiaodong") == found("wang xiao") == found("王xiao") == {"wxd", "wang"}
    assert found("xiaodong") == {"wxd", "wang"}  # a given name alone
    assert found("wxd") == {"wxd"}  # the initials of 王小东 (Wang Xiaodong's are wx)
    assert found("wx") == {"wxd", "wang"}
    assert found("wy") == {"wang2"} and found("cf") == {"chen"} and found("zh") == {"zhang"}
    assert found("zengj") == {"zeng"}  # 曾 as a family name reads zeng
    assert found("wang,cf") == {"wxd", "wang", "wang2", "chen"}
    bad = client.get("/Patient", params={"phonetic": "--"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["phonetic"]


def test_chinese_names_sort_by_pinyin_and_match_by_their_characters(api: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    made = _create(api, tag, NAMES)
    _check_matches(api, tag, made)
    _check_sounds(api, tag, made, indexed=True)
    hospital = api.post("/Organization", json={"resourceType": "Organization", "name": f"上海肿瘤医院{tag}"}).json()
    for value in ("shzlyy", "shanghai zhongliu", "上海肿瘤"):
        found = api.get("/Organization", params={"phonetic": value, "_count": "100"}).json().get("entry", [])
        assert hospital["id"] in {e["resource"]["id"] for e in found}, value
    by_id = {rid: key for key, rid in made.items()}
    for sort, expected in (("family", ORDER), ("-family", ORDER[::-1])):
        got = [by_id[rid] for rid in _ids(api, {"identifier": f"urn:collation:{tag}|", "_sort": sort})]
        assert got == expected, (sort, got)


def _to_layout_7(db: Any) -> int:
    """Rewrite every string entry of the database's Patients in its form before layout 8 (the text itself, no
    readings): in the versions' ``ix`` and in ``search_index``; returns how many entries changed."""
    def plain(enc: str) -> str:
        if not enc.endswith(".") or not all(c in "0123456789abcdef" for c in enc[:-1]):
            return enc
        text = bytes.fromhex(enc[:-1]).decode("utf-8")
        return f"{hexs(readable(text))}." if MARK in text else enc

    changed = 0
    for doc in db["resources"].find({"_id": {"$regex": "^Patient/"}}, {"ix": 1}):
        items = []
        for item in doc["ix"].split(" "):
            code, enc, rest = item.split("|", 2)
            items.append(f"{code}|{plain(enc)}|{rest}")
        db["resources"].update_one({"_id": doc["_id"]}, {"$set": {"ix": " ".join(items)}})
    for doc in list(db["search_index"].find({"_id": {"$regex": r"^Patient\|"}})):
        rtype, code, enc, rest = doc["_id"].split("|", 3)
        if plain(enc) != enc:
            db["search_index"].delete_one({"_id": doc["_id"]})
            db["search_index"].insert_one({"_id": f"{rtype}|{code}|{plain(enc)}|{rest}"})
            changed += 1
    return changed


def test_a_store_indexed_before_pinyin_is_searched_by_both_forms_until_its_upgrade(store_uri: str,
                                                                                tmp_path: Path) -> None:
    """Layout 7 held Chinese strings as their text. Until the upgrade has re-indexed every resource, a search for
    Chinese text reads both forms (the store's entries are of either); afterwards only the new one is left and
    the names sort by pinyin."""
    database = f"collation{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    hub = start_hub(store_uri, tmp_path / "hub", database=database)
    try:
        with hub.client() as client:
            made = _create(client, tag, NAMES)
    finally:
        stop_hub(hub)
    with MongoClient(store_uri) as mongo:
        db = mongo[database]
        assert _to_layout_7(db) >= 3 * 6  # family, name, given of the Chinese names (at least)
        db["jobs"].replace_one({"_id": LAYOUT_MARKER}, {"_id": LAYOUT_MARKER, "layout": 7})
        # another instance has started the upgrade and not finished it: this hub searches a store of both forms
        db["jobs"].insert_one({"_id": f"{LAYOUT_MARKER}-{INDEX_LAYOUT}", "o": "another instance"})
    hub = start_hub(store_uri, tmp_path / "hub", database=database)
    try:
        with hub.client() as client:
            _check_matches(client, tag, made)
            _check_sounds(client, tag, made, indexed=False)
    finally:
        stop_hub(hub)
    with MongoClient(store_uri) as mongo:
        mongo[database]["jobs"].delete_one({"_id": f"{LAYOUT_MARKER}-{INDEX_LAYOUT}"})
    hub = start_hub(store_uri, tmp_path / "hub", database=database)  # this one upgrades the store
    try:
        with MongoClient(store_uri) as mongo:
            db = mongo[database]
            deadline = time.monotonic() + 60
            while (db["jobs"].find_one({"_id": LAYOUT_MARKER}) or {}).get("layout") != INDEX_LAYOUT:  # 8 or later
                assert time.monotonic() < deadline, "the upgrade did not finish within 60 s"
                time.sleep(0.2)
            keys = [d["_id"] for d in db["search_index"].find({"_id": {"$regex": r"^Patient\|(family|given)\|"}})]
            texts = [bytes.fromhex(k.split("|")[2][:-1]).decode() for k in keys]
            assert texts and all(MARK in t for t in texts if not t.isascii()), texts
        with hub.client() as client:
            _check_matches(client, tag, made)
            _check_sounds(client, tag, made, indexed=True)
            by_id = {rid: key for key, rid in made.items()}
            got = [by_id[rid] for rid in _ids(client, {"identifier": f"urn:collation:{tag}|", "_sort": "family"})]
            assert got == ORDER
    finally:
        stop_hub(hub)


def test_the_readings_are_derived_from_pypinyin() -> None:
    """data/pinyin.json is what scripts/derive_pinyin.py derives from the installed pypinyin."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "derive_pinyin.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

"""Fuzzing the HTTP API's paths and query strings (CONTRACT §6).

The real twisted.web Site of parkd/node/http.py on the node double of tests/http
(``httpnode.FakeNode``: a real ParkingState with a few frames, a scripted core).
Paths under /api (route shapes with nonsense ids, unicode, percent-encoding
garbage, doubled or trailing slashes), query strings (unknown, repeated and
empty parameters, huge, negative, fractional and non-ASCII numbers), any method.
Linearizable reads are confirmed, time out, or find no leader.

Every answer is JSON with a documented status; errors carry an "error" member;
never a 500, never an error logged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from fuzzkit import captured_logs, fuzz
from parkd.node.reads import READ_TIMEOUT

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "http"))
from httpnode import NOW, FakeNode  # noqa: E402  (tests/http/httpnode.py)

GET_STATUSES = {200, 400, 404, 405, 503}
ADMIN_STATUSES = {400, 404, 405, 409, 413, 415, 421, 503, 504}

NUMBERS = ["0", "1", "7", "8", "9", "-1", "-0", "+1", "1.5", "1e3", "0x10", "007", " 7", "7 ", "", "٣", "７", "²",
           "4294967295", "4294967296", "9223372036854775807", "9223372036854775808", "18446744073709551616",
           "9" * 19, "9" * 20, "9" * 400, "NaN", "inf", "-inf", "None", "null", "true"]  # fmt: skip
WORDS = ["north", "south", "NORTH", "west", "lots", "cameras", "frames", "history", "cluster", "admin", "add-node",
         "remove-node", "transfer-leader", "..", ".", "%", "%zz", "%ff", "%c0%af", "%00", "%2F", "%2e%2e", "~", "*",
         "a" * 300]  # fmt: skip
PARAMS = ["consistency", "since", "limit", "window", "points", "lot", "Consistency", "since[]", "", " ", "x", "ü"]
CONSISTENCY = ["local", "local", "linearizable", "LOCAL", "", "eventual", "local\x00"]

chars = st.characters(exclude_categories=("Cs",))
filler = st.one_of(st.sampled_from(NUMBERS + WORDS), st.text(chars, max_size=12))


def encode(text: str, how: int) -> str:
    """A path or query piece: percent-encoded (how 0), lightly encoded (1) or raw garbage (2)."""
    if how == 0:
        return quote(text, safe="")
    if how == 1:
        return quote(text, safe="%+=&;:@!$'()*,~")
    return "".join(c if 32 < ord(c) < 127 and c not in "#?" else quote(c, safe="") for c in text)


routes = st.one_of(
    st.tuples(st.sampled_from(["lots", "cameras", "cluster"])),
    st.tuples(st.sampled_from(["lots", "cameras", "admin"]), filler),
    st.tuples(st.just("lots"), filler, st.just("history")),
    st.tuples(st.just("cameras"), filler, st.just("frames")),
    st.lists(filler, max_size=5).map(tuple),
)
prefixes = st.sampled_from(["/api/v1/"] * 6 + ["/api/v2/", "/api/", "/API/v1/", "/api//v1/", "/api/v1//", "//api/v1/"])
suffixes = st.sampled_from(["", "", "", "/", "//", "/."])


@st.composite
def targets(draw):
    how = draw(st.integers(0, 2))
    path = draw(prefixes) + "/".join(encode(p, how) for p in draw(routes)) + draw(suffixes)
    pairs = []
    if draw(st.integers(0, 3)):  # usually a consistency first, often local (answered at once)
        pairs.append(("consistency", draw(st.sampled_from(CONSISTENCY))))
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.one_of(st.sampled_from(PARAMS), st.text(chars, max_size=6)))
        value = draw(st.one_of(st.sampled_from(NUMBERS + CONSISTENCY + WORDS), st.text(chars, max_size=8)))
        pairs.append((name, value))
    pairs = draw(st.permutations(pairs))
    parts = []
    for name, value in pairs:
        shape = draw(st.integers(0, 4))
        if shape == 0:
            parts.append(encode(name, how))  # no "="
        else:
            parts.append(f"{encode(name, how)}={encode(value, how)}")
    separator = draw(st.sampled_from(["&", "&", "&", ";", "&&"]))
    query = separator.join(parts)
    if query or draw(st.booleans()):
        path += "?" + query
    return path


VALID = {"since": ["0", "1", "2"], "limit": ["1", "2", "10000"], "window": ["1", "3600", "604800"],
         "points": ["1", "60", "1000"], "lot": ["north", "south"], "consistency": ["local", "linearizable"]}
PLAUSIBLE = [("lots", ()), ("lots/north", ()), ("lots/south/history", ("window", "points")), ("cluster", ()),
             ("cameras", ("lot",)), ("cameras/7", ()), ("cameras/8", ()), ("cameras/7/frames", ("since", "limit"))]


@st.composite
def plausible_targets(draw):
    """A real route with valid parameters, then maybe one thing wrong: most answers are 200."""
    path, names = draw(st.sampled_from(PLAUSIBLE))
    chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    pairs = [(n, draw(st.sampled_from(VALID[n]))) for n in chosen]
    if draw(st.integers(0, 2)):
        pairs.append(("consistency", draw(st.sampled_from(VALID["consistency"]))))
    if draw(st.integers(0, 3)) == 0:
        pairs.append((draw(st.sampled_from(PARAMS)), draw(st.sampled_from(NUMBERS))))
    query = "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in draw(st.permutations(pairs)))
    return f"/api/v1/{path}" + (f"?{query}" if query else "")


methods = st.sampled_from(["GET"] * 8 + ["HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get", "FOO"])


def make_node(leader: bool) -> FakeNode:
    node = FakeNode()
    node.apply(7, 1, 40, at=NOW - 5)
    node.apply(7, 2, 41, at=NOW - 4)
    node.apply(8, 1, 12, lot="south", at=NOW - 100)
    if not leader:
        node.core.leader_id = None
    return node


def finish(node: FakeNode, request, answer_reads: bool):
    """The response, once reads were confirmed (or timed out) and admin waits ended."""
    response = request.response()
    if response is None and answer_reads:
        for ctx in list(node.core.asked):
            node.read_state(ctx, node.index)
        response = request.response()
    for delay in (READ_TIMEOUT, 700.0):  # read timeout, then the longest admin wait
        if response is None:
            node.clock.advance(delay)
            response = request.response()
    return response


def check(method: str, target: str, response) -> None:
    assert response is not None, f"{method} {target}: no answer"
    admin = "/admin" in target.lower() and method == "POST"
    allowed = ADMIN_STATUSES | GET_STATUSES if admin else GET_STATUSES
    assert response.status in allowed, (method, target, response.status, response.body[:300])
    if method == "HEAD":
        return
    assert response.headers.get("content-type", "").startswith("application/json"), (target, response.headers)
    document = json.loads(response.body)
    assert isinstance(document, dict)
    if response.status >= 400:
        assert isinstance(document.get("error"), str) and document["error"], (target, document)
    if response.status == 503:
        assert response.headers.get("retry-after") == "1"
    if response.status == 405:
        assert response.headers.get("allow")


@fuzz(300)
@given(methods, st.lists(st.one_of(targets(), plausible_targets()), min_size=1, max_size=6), st.booleans(),
       st.booleans())
def test_any_path_and_query_under_api_gets_a_json_answer_with_a_documented_status(method, paths, leader, confirm):
    node = make_node(leader)
    with captured_logs() as logs:
        for target in paths:
            request = node.request(target, method)
            check(method, target, finish(node, request, confirm))
    assert logs.errors() == [], logs.errors()
    node.engine.dispose()


@fuzz(100)
@given(st.lists(st.sampled_from(sorted(VALID)).flatmap(
           lambda name: st.tuples(st.just(name), st.sampled_from(VALID[name] + NUMBERS + CONSISTENCY))),
       min_size=1, max_size=4),
       st.sampled_from(["/api/v1/cameras/7/frames", "/api/v1/lots/north/history", "/api/v1/cameras"]))
def test_parameters_are_checked_one_by_one(pairs, path):
    """With known parameters only: 200, or 400 naming the bad one (never 404 or 500)."""
    node = make_node(True)
    query = "&".join(f"{quote(name)}={quote(value, safe='')}" for name, value in pairs)
    with captured_logs() as logs:
        response = finish(node, node.request(f"{path}?{query}"), True)
    check("GET", path, response)
    names = [name for name, _ in pairs]
    if response.status == 400:
        error = json.loads(response.body)["error"]
        assert any(name in error for name in names) or "lot" in error, error
    else:
        allowed = {"/api/v1/cameras/7/frames": {"since", "limit", "consistency"},
                   "/api/v1/lots/north/history": {"window", "points", "consistency"},
                   "/api/v1/cameras": {"lot", "consistency"}}[path]  # fmt: skip
        assert set(names) <= allowed and len(names) == len(set(names))
        assert response.status in (200, 404), response.body  # 404: an unknown ?lot=
    assert logs.errors() == []
    node.engine.dispose()

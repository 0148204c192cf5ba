"""petvr serve: the FastAPI app over two collections (one backbone loaded once), range requests, path traversal
refused, 404 for a missing file, 422 for an empty query, and a bounded concurrent load test without errors."""
from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from petvr.search import Retriever  # noqa: E402
from petvr.search.server import create_app, open_collections  # noqa: E402
from petvr.search.store import STORE_NAME  # noqa: E402


@pytest.fixture(scope="module")
def served(world, tmp_path_factory):
    """Two collections of the world opened by one server: the studio MSR-VTT videos indexed with the bundled default,
    its ActivityNet videos with an adapter of their own (zero-shot with query scoring: a query-dependent method, so
    that collection re-ranks); plus a secret file beside the first root."""
    from petvr.backbone.checkpoints import load_backbone
    from petvr.methods import RetrievalModel
    from petvr.training.recipe import load_recipe, shipped_recipes_dir

    base = tmp_path_factory.mktemp("served")
    studio = world / "world" / "studio"
    roots = {"clips": base / "clips", "long": base / "long"}
    shutil.copytree(studio / "msrvtt" / "videos", roots["clips"])
    shutil.copytree(studio / "activitynet" / "videos", roots["long"])
    (base / "secret.txt").write_text("not yours")
    scoring = RetrievalModel(load_backbone("petvr-tiny"), "zero_shot", sim_header="query_scoring")
    adapter = scoring.save_adapter(base / "query-scoring",
                                   recipe=load_recipe(shipped_recipes_dir() / "synthetic" / "zero_shot.toml"))
    indexes = []
    for (name, root), retriever in zip(roots.items(), (Retriever.from_adapter(), Retriever.from_adapter(adapter))):
        retriever.index(root, base / f"{name}.index", progress=False, segment_seconds=2.0)
        indexes.append(base / f"{name}.index")
    collections = open_collections(indexes)
    client = TestClient(create_app(collections))
    return {"client": client, "collections": collections, "base": base, "roots": roots,
            "captions": _captions(studio / "msrvtt")}


def _captions(msrvtt: Path) -> dict[str, str]:
    data = json.loads((msrvtt / "MSRVTT_data.json").read_text())
    captions = {}
    for sentence in data["sentences"]:
        captions.setdefault(sentence["video_id"], sentence["caption"])
    return captions


def test_collections_share_one_backbone_and_health(served):
    collections = served["collections"]
    assert list(collections) == ["clips", "long"]
    first, second = (collections[name].retriever for name in ("clips", "long"))
    assert first.adapter == "default" and second.adapter.endswith("query-scoring")
    assert not first.pairwise and second.pairwise
    a = dict(first.model.backbone.named_parameters())["visual.conv1.weight"]
    b = dict(second.model.backbone.named_parameters())["visual.conv1.weight"]
    assert a.data_ptr() == b.data_ptr()  # one backbone in memory, two adapters' models on it
    client = served["client"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["collections"] == {"clips": 18, "long": 5}
    listed = client.get("/collections").json()
    assert [entry["name"] for entry in listed] == ["clips", "long"]
    docs = client.get("/openapi.json").json()
    assert {"/search", "/videos/{video_id}", "/thumbnails/{video_id}", "/health"} <= set(docs["paths"])
    assert client.get("/docs").status_code == 200


def test_search_returns_ranked_hits_with_urls(served):
    client = served["client"]
    video_id, caption = next(iter(served["captions"].items()))
    answer = client.get("/search", params={"q": caption, "k": 5, "collection": "clips"}).json()
    assert answer["collection"] == "clips" and len(answer["hits"]) == 5
    assert [hit["rank"] for hit in answer["hits"]] == [1, 2, 3, 4, 5]
    assert "file" not in answer["hits"][0]
    assert f"{video_id}.mp4" in [hit["path"] for hit in answer["hits"]]
    hit = answer["hits"][0]
    thumbnail = client.get(hit["thumbnail_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert thumbnail.content[:2] == b"\xff\xd8"
    like = client.get("/search", params={"like": hit["video_id"], "k": 1, "collection": "clips"}).json()
    assert like["kind"] == "video" and like["hits"][0]["video_id"] == hit["video_id"]
    long_answer = client.get("/search", params={"q": "a red circle moves left", "collection": "long"}).json()
    assert long_answer["reranked"] and long_answer["collection"] == "long"
    assert any(hit["end"] - hit["start"] <= 2.0 + 1e-6 < hit["duration"] for hit in long_answer["hits"])


def test_bad_queries_are_422_and_unknown_things_404(served):
    client = served["client"]
    assert client.get("/search", params={"q": ""}).status_code == 422
    assert client.get("/search", params={"q": "   "}).status_code == 422
    assert client.get("/search").status_code == 422
    assert client.get("/search", params={"q": "a", "k": 0}).status_code == 422
    assert client.get("/search", params={"q": "a", "collection": "nope"}).status_code == 404
    assert client.get("/videos/99999").status_code == 404
    assert client.get("/thumbnails/99999").status_code == 404
    answer = client.get("/search", params={"q": "a red circle moves left " * 20}).json()
    assert "truncated" in answer["note"]


def test_search_by_example_uploads_an_image_or_a_clip(served, monkeypatch):
    from petvr.search import server

    client = served["client"]
    ids = dict(served["collections"]["clips"].store.connection.execute("SELECT path, id FROM videos"))
    frame = client.get(f"/thumbnails/{ids['video3.mp4']}", params={"collection": "clips", "t": 1.0}).content
    by_image = client.post("/search?k=3&collection=clips", content=frame, headers={"Content-Type": "image/jpeg"})
    assert by_image.status_code == 200, by_image.text
    answer = by_image.json()
    assert answer["kind"] == "image" and answer["hits"][0]["path"] == "video3.mp4"  # a frame finds its own video
    assert "uploaded image" in answer["query"] and "thumbnail_url" in answer["hits"][0]
    clip = (served["roots"]["clips"] / "video2.mp4").read_bytes()
    by_clip = client.post("/search", params={"k": 2, "collection": "clips"}, content=clip,
                          headers={"Content-Type": "video/mp4"}).json()
    assert by_clip["kind"] == "video" and by_clip["hits"][0]["path"] == "video2.mp4"
    assert by_clip["hits"][0]["score"] > 0.99  # the same file embeds to the indexed vector
    # Bad uploads are said, never a 500, and never name the server's temporary file.
    for body, content_type, status in ((b"hello", "text/plain", 415), (b"", "image/png", 422),
                                       (b"not a picture", "image/png", 422), (b"not a film", "video/mp4", 422)):
        response = client.post("/search", content=body, headers={"Content-Type": content_type})
        assert response.status_code == status, (content_type, response.text)
        assert "petvr-query-" not in response.text
    assert "the uploaded image" in client.post("/search", content=b"not a picture",
                                               headers={"Content-Type": "image/png"}).json()["detail"]
    monkeypatch.setattr(server, "MAX_UPLOAD_BYTES", 1000)
    assert client.post("/search", content=clip, headers={"Content-Type": "video/mp4"}).status_code == 413
    assert "requestBody" in client.get("/openapi.json").json()["paths"]["/search"]["post"]


def test_videos_stream_with_range_requests(served):
    client = served["client"]
    path = served["roots"]["clips"] / "video0.mp4"
    video_id = served["collections"]["clips"].store.connection.execute(
        "SELECT id FROM videos WHERE path = 'video0.mp4'").fetchone()[0]
    whole = client.get(f"/videos/{video_id}", params={"collection": "clips"})
    assert whole.status_code == 200 and whole.content == path.read_bytes()
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    part = client.get(f"/videos/{video_id}?collection=clips", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == path.read_bytes()[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{path.stat().st_size}"


def test_path_traversal_and_missing_files_are_refused(served, tmp_path):
    client = served["client"]
    base, root = served["base"], served["roots"]["clips"]
    for attempt in ("../secret.txt", "..%2Fsecret.txt", "%2e%2e/%2e%2e/secret.txt"):
        response = client.get(f"/videos/{attempt}")
        assert response.status_code in (404, 422) and b"not yours" not in response.content
    # Rows that point outside the root (a tampered store, a symlink leading out) are never served.
    store_path = base / "clips.index" / STORE_NAME
    with sqlite3.connect(store_path) as connection:
        connection.execute("INSERT INTO videos(path, size, mtime_ns, fingerprint, duration) "
                           "VALUES ('../secret.txt', 9, 0, 'x', 1.0)")
        outside = connection.execute("SELECT id FROM videos WHERE path = '../secret.txt'").fetchone()[0]
        (root / "link.mp4").symlink_to(base / "secret.txt")
        connection.execute("INSERT INTO videos(path, size, mtime_ns, fingerprint, duration) "
                           "VALUES ('link.mp4', 9, 0, 'y', 1.0)")
        linked = connection.execute("SELECT id FROM videos WHERE path = 'link.mp4'").fetchone()[0]
    try:
        for video_id in (outside, linked):
            for url in (f"/videos/{video_id}?collection=clips", f"/thumbnails/{video_id}?collection=clips"):
                response = client.get(url)
                assert response.status_code == 404 and b"not yours" not in response.content
        # A file deleted after indexing: 404, never a 500.
        moved = root / "video1.mp4"
        moved.rename(tmp_path / "video1.mp4")
        missing = served["collections"]["clips"].store.connection.execute(
            "SELECT id FROM videos WHERE path = 'video1.mp4'").fetchone()[0]
        try:
            assert client.get(f"/videos/{missing}?collection=clips").status_code == 404
            assert client.get(f"/thumbnails/{missing}?collection=clips").status_code == 404
        finally:
            (tmp_path / "video1.mp4").rename(moved)
    finally:
        with sqlite3.connect(store_path) as connection:
            connection.execute("DELETE FROM videos WHERE id IN (?, ?)", (outside, linked))
        (root / "link.mp4").unlink()


def test_web_page_is_served(served):
    page = served["client"].get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for element in ('id="query"', 'id="collection"', 'id="results"', 'id="player"'):
        assert element in page.text


@pytest.fixture(scope="module")
def live_server(served):
    """The app on a real local port (uvicorn in a thread), for the load test and the browser."""
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(served["collections"]), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_concurrent_load_returns_no_errors(served, live_server):
    import httpx

    captions = list(served["captions"].values())
    ids = [row[0] for row in served["collections"]["clips"].store.connection.execute("SELECT id FROM videos")]
    requests = []
    for number in range(240):  # bounded: 240 requests, 16 at a time
        kind = number % 4
        if kind in (0, 1):
            requests.append(("/search", {"q": captions[number % len(captions)], "k": "10",
                                         "collection": "clips" if kind == 0 else "long"}, {}))
        elif kind == 2:
            requests.append((f"/thumbnails/{ids[number % len(ids)]}", {"collection": "clips", "t": "0.5"}, {}))
        else:
            requests.append((f"/videos/{ids[number % len(ids)]}", {"collection": "clips"},
                             {"Range": "bytes=0-1023"}))

    with httpx.Client(base_url=live_server, timeout=60) as client:
        def fetch(request):
            path, params, headers = request
            response = client.get(path, params=params, headers=headers)
            return response.status_code, path

        with ThreadPoolExecutor(max_workers=16) as pool:
            outcomes = list(pool.map(fetch, requests))
    failures = [(status, path) for status, path in outcomes if status not in (200, 206)]
    assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {failures[:5]}"
    assert sum(status == 206 for status, _ in outcomes) == 60


def _chromium():
    """A headless Chromium driven by selenium through Debian's chromedriver, or a skip saying how to install it."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed; `make test` installs them from Debian's packages "
                    "(apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_web_page_in_headless_chromium(served, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    caption = served["captions"]["video3"]
    expected = served["client"].get("/search", params={"q": caption, "k": 12, "collection": "clips"}).json()["hits"]
    browser = _chromium()
    try:
        browser.get(live_server + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: len(Select(b.find_element(By.ID, "collection")).options) == 2)
        Select(browser.find_element(By.ID, "collection")).select_by_value("clips")
        box = browser.find_element(By.ID, "query")
        box.send_keys(caption)
        box.send_keys(Keys.ENTER)
        cards = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results .card") or False)
        assert len(cards) == len(expected)
        assert [int(card.get_attribute("data-video-id")) for card in cards] == [hit["video_id"] for hit in expected]
        first = expected[0]
        thumbnail = cards[0].find_element(By.CSS_SELECTOR, "img.thumbnail")
        assert thumbnail.get_attribute("src").endswith(first["thumbnail_url"])
        wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumbnail))
        assert first["path"] in cards[0].text
        cards[0].click()
        player = browser.find_element(By.ID, "player")
        wait.until(lambda b: player.get_attribute("src"))
        start = f"{first['time']:.2f}"
        assert player.get_attribute("src") == f"{live_server}{first['video_url']}#t={start}"
        assert browser.find_element(By.ID, "viewer").is_displayed()
        # The browser fetched the video (range requests) and the player sits at the hit's time.
        wait.until(lambda b: b.execute_script("return arguments[0].readyState", player) >= 1)
        position = browser.execute_script("return arguments[0].currentTime", player)
        assert position == pytest.approx(first["time"], abs=0.05)
        # Search by example: choosing an image file posts it, and its hits replace the cards.
        image = tmp_path / "frame.jpg"
        image.write_bytes(served["client"].get(first["thumbnail_url"]).content)
        by_image = served["client"].post("/search?k=12&collection=clips", content=image.read_bytes(),
                                         headers={"Content-Type": "image/jpeg"}).json()["hits"]
        wanted = [hit["video_id"] for hit in by_image]
        assert wanted != [hit["video_id"] for hit in expected]  # so that the page visibly changes
        browser.find_element(By.ID, "example").send_keys(str(image))
        wait.until(lambda b: [int(card.get_attribute("data-video-id"))
                              for card in b.find_elements(By.CSS_SELECTOR, "#results .card")] == wanted)
    finally:
        browser.quit()

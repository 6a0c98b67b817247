"""The editing gallery page (gallery/edit_page.py, bench_edit.py --gallery): every (prompt, seed) pair is a
row with one image per column, and each image file holds that pair's pixels."""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowalign.gallery.edit_page import EDIT_COLUMNS, save_edit_pair, write_edit_page

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


class Rows(HTMLParser):
    """#gallery rows -> [(data-key, [(data-column, img src)])], and the summary table's cells."""

    def __init__(self):
        super().__init__()
        self.rows, self.table, self.column, self.summary, self.in_td = [], None, None, [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id")
        elif tag == "tr" and self.table == "gallery" and "data-key" in a:
            self.rows.append((a["data-key"], []))
        elif tag == "td" and self.table == "gallery":
            self.column = a.get("data-column")
        elif tag == "td" and self.table == "summary":
            self.in_td = True
        elif tag == "img" and self.table == "gallery":
            self.rows[-1][1].append((self.column, a["src"]))

    def handle_endtag(self, tag):
        self.in_td = False if tag == "td" else self.in_td

    def handle_data(self, data):
        if self.in_td:
            self.summary.append(data)


def image(seed: int) -> torch.Tensor:
    return torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_page_lists_every_pair_with_its_images(tmp_path):
    pairs, made = [], {}
    for seed in (1, 0):  # written out of order: the page sorts by prompt, then seed
        for i, prompt in enumerate(["a red circle", "a red circle left of a green square"]):
            imgs = {c: image(100 * seed + 10 * i + n) for n, c in enumerate(EDIT_COLUMNS)}
            made |= {(i, seed, c): v for c, v in imgs.items()}
            metrics = {c: {"success": float(n % 2), "outside_change": 0.25 * n} for n, c in enumerate(EDIT_COLUMNS[1:])}
            pairs.append(save_edit_pair(tmp_path, i, seed, prompt, prompt.replace("red", "blue", 1), imgs, metrics))
    page = write_edit_page(tmp_path, pairs, info="test")
    parser = Rows()
    parser.feed(page.read_text())
    assert [k for k, _ in parser.rows] == ["p000_s0", "p000_s1", "p001_s0", "p001_s1"]
    for key, cells in parser.rows:
        assert [c for c, _ in cells] == list(EDIT_COLUMNS)  # source -> edit_control, sdedit, regenerate
        i, seed = int(key[1:4]), int(key.split("_s")[1])
        for column, src in cells:
            pixels = torch.from_numpy(np.array(Image.open(tmp_path / src))).permute(2, 0, 1).float() / 255
            assert (pixels - made[(i, seed, column)]).abs().max() <= 0.5 / 255 + 1e-6, (key, column)
    # summary: edit_control (n = 0) success 0, change 0; sdedit (n = 1) success 1, change 0.25 in every pair
    cells = [c.strip() for c in parser.summary]
    assert cells[cells.index("sdedit") + 1 : cells.index("sdedit") + 3] == ["0.250", "1.000"]  # sorted names
    assert cells[cells.index("edit_control") + 1 : cells.index("edit_control") + 3] == ["0.000", "0.000"]


def test_bench_edit_gallery_rows_follow_the_prompts(tmp_path):
    bench_edit = pytest.importorskip("bench_edit")
    prompts = bench_edit.PROMPTS[:2]
    targets = [p.replace("a red circle", "a blue circle", 1) for p in prompts]
    imgs = {c: torch.stack([image(n), image(n + 50)]) for n, c in enumerate(EDIT_COLUMNS)}
    out = {m: {k: torch.tensor([0.0, 1.0]) for k in ("success", "colour_success", "outside_change", "inside_change")}
           for m in EDIT_COLUMNS[1:]}  # fmt: skip
    out["source"] = {"success": torch.tensor([1.0, 0.0])}
    rows = bench_edit.gallery_pairs(str(tmp_path), 3, prompts, targets, imgs, out)
    assert [(r["prompt_index"], r["seed"], r["target"]) for r in rows] == [(0, 3, targets[0]), (1, 3, targets[1])]
    assert rows[1]["images"]["sdedit"] == "p001_s3_sdedit.png" and (tmp_path / "p001_s3_sdedit.png").is_file()
    assert rows[1]["metrics"]["regenerate"] == {"success": 1.0, "colour_success": 1.0, "outside_change": 1.0}
    assert rows[0]["metrics"]["source"] == {"success": 1.0} and rows[1]["metrics"]["source"] == {"success": 0.0}


@pytest.mark.e2e
@pytest.mark.timeout(300)  # a stuck browser start fails the test instead of hanging the step
def test_edit_page_in_headless_chromium(tmp_path):
    import shutil

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    metrics = {c: {"success": 1.0} for c in EDIT_COLUMNS[1:]}
    pairs = [
        save_edit_pair(tmp_path, i, 0, "a red circle", "a blue circle", {c: image(i) for c in EDIT_COLUMNS}, metrics)
        for i in range(2)
    ]
    url = write_edit_page(tmp_path, pairs).as_uri()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_bin), options=opts)
    try:
        driver.get(url)
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 60).until(  # the load event can come before every image decoded on a busy machine
            lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)")
        )
        images = driver.execute_script(
            "return Array.from(document.querySelectorAll('#gallery img')).map(i => "
            "[i.closest('tr').dataset.key, i.closest('td').dataset.column, i.complete && i.naturalWidth == 6])"
        )
        assert images == [[f"p00{i}_s0", c, True] for i in range(2) for c in EDIT_COLUMNS]  # every image decoded
    finally:
        driver.quit()

"""The OCR reward: Flow-GRPO's formula by hand, then the real PP-OCRv4 models (rapidocr's wheel) on
PIL-rendered strings."""

from __future__ import annotations

import pytest
import torch

from flowalign.rewards import load_reward
from flowalign.rewards.ocr import edit_distance, ocr_score, ocr_target

pytest.importorskip("rapidocr_onnxruntime", reason="the OCR extra: pip install 'flowalign[ocr]'")


def test_formula_by_hand():
    assert edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert ocr_target('a neon sign that says "OPEN 24 HOURS" at night') == "OPEN 24 HOURS"
    assert ocr_target("a shop called \u201cTea Time\u201d") == "Tea Time"
    assert ocr_score("Hello World", '"hello  world"'.strip('"')) == 1.0  # case and spaces ignored
    assert ocr_score("the OPEN sign", "open") == 1.0  # target contained: d = 0
    assert ocr_score("Helo", "Hello") == pytest.approx(1 - 1 / 5)  # one deletion / 5 chars = 0.8
    assert ocr_score("OPEN24HOURZ", "OPEN 24 HOURS") == pytest.approx(1 - 1 / 11)  # 11 chars without spaces
    assert ocr_score("qwertyuiopasdf", "Stop") == 0.0  # d = 13 > 4: floored at 1 - 4/4 = 0
    assert ocr_score("", "Stop") == 0.0


@pytest.mark.parametrize("prompt", ["a red circle", 'an empty sign ""', 'a sign "   "'])
def test_prompt_without_quoted_text_is_one_clear_error(prompt):
    with pytest.raises(ValueError, match="no quoted text"):
        ocr_target(prompt)


def test_real_model_reads_rendered_text():
    from text_images import change_one, fonts, render, to_tensor

    reward = load_reward("ocr", det_limit_side_len=320, threads=1)
    faces = fonts()
    words = ["OPEN 24 HOURS", "Coffee Shop", "flowalign"]
    images = [render(w, faces[i % len(faces)][1], size=192, seed=i) for i, w in enumerate(words)]
    x = torch.cat([to_tensor(images), torch.ones(1, 3, 192, 192)])  # + a blank page
    prompts = [f'a poster with the text "{w}"' for w in words] + ['a blank poster saying "Stop"']
    clean = reward(x, prompts)
    assert clean.tolist() == [1.0, 1.0, 1.0, 0.0]  # every string read exactly; nothing on the blank page
    changed = change_one(words[0], seed=1)  # the image says OPEN 24 HOURS, the prompt one letter else
    assert reward(x[:1], [f'a poster with the text "{changed}"']).item() == pytest.approx(1 - 1 / 11)
    with pytest.raises(ValueError, match="no quoted text"):
        reward(x[:1], ["a poster"])

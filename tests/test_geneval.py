"""GenEval metadata prompt sets: the schema check, loading as prompts with clause metadata, and the
testbed checker judging those clauses on ground-truth scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flowalign.rewards import load_reward
from flowalign.rewards.geneval import geneval_rows, load_geneval
from flowalign.testbed import world as W
from flowalign.testbed.render import render
from flowalign.train.data import load_prompts

PROMPTS = [
    "a red circle",
    "two blue squares",
    "a green triangle and a yellow circle",
    "a purple square left of a red triangle",
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_geneval_rows_load_as_prompts_with_clause_metadata(tmp_path):
    rows = geneval_rows(PROMPTS)
    assert rows[1] == {
        "tag": "counting",
        "include": [{"class": "square", "count": 2, "color": "blue"}],
        "exclude": [{"class": "square", "count": 3}],  # GenEval's exact count: >= 2 and < 3
        "prompt": "two blue squares",
    }
    assert rows[3]["include"][0]["position"] == ["left of", 1]
    path = write(tmp_path / "evaluation_metadata.jsonl", rows)
    ps = load_geneval(path)
    assert ps.prompts == PROMPTS and ps.metadata[3]["tag"] == "position"
    plain = load_prompts(path)  # the trainer's own .jsonl loader reads the same columns
    assert plain.prompts == ps.prompts and plain.columns([0, 1]) == ps.columns([0, 1])


@pytest.mark.parametrize(
    "row, match",
    [
        ({"tag": "counting", "include": [{"class": "square", "count": 0}], "prompt": "x"}, "'count' must be"),
        ({"tag": "shapes", "include": [{"class": "square"}], "prompt": "x"}, "'tag' 'shapes' is not one of"),
        ({"tag": "position", "include": [{"class": "a", "position": ["near", 0]}], "prompt": "x"}, "'position' must"),
        ({"tag": "colors", "include": [], "prompt": "x"}, "'include' must be a non-empty list"),
    ],
)
def test_malformed_rows_are_one_error_naming_the_line(tmp_path, row, match):
    path = write(tmp_path / "m.jsonl", [geneval_rows(["a red circle"])[0], row])
    with pytest.raises(ValueError, match=rf"m.jsonl:2.*{match}"):
        load_geneval(path)


def test_testbed_checker_judges_the_clauses_on_ground_truth_scenes(tmp_path):
    rng = np.random.default_rng(0)
    images = render([W.scene_for(W.parse_prompt(p), rng) for p in PROMPTS])
    ps = load_geneval(write(tmp_path / "g.jsonl", geneval_rows(PROMPTS)))
    meta = ps.columns(list(range(len(PROMPTS))))
    strict = load_reward("geneval_testbed")
    assert strict(images, PROMPTS, **meta).tolist() == [1.0, 1.0, 1.0, 1.0]
    # the same images against wrong metadata: three blue squares wanted (2 drawn), relation mirrored
    wrong = geneval_rows(["a red circle", "three blue squares", PROMPTS[2], "a purple square right of a red triangle"])
    cols = {k: [r[k] for r in wrong] for k in ("tag", "include", "exclude")}
    fraction = load_reward("geneval_testbed", output="fraction")
    # row 1 clauses: squares >= 3 (no), blue squares >= 3 (no), squares < 4 (yes) -> 1/3;
    # row 3: 2 x (class, colour) hold, the relation does not -> 4/5
    assert fraction(images, PROMPTS, **cols).tolist() == pytest.approx([1.0, 1 / 3, 1.0, 4 / 5])
    with pytest.raises(ValueError, match="no 'include' metadata column"):
        strict(images, PROMPTS)

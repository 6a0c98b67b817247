"""Prompt files and the distributed group sampler."""

import pytest

from flowalign.train.data import check_group_arithmetic, group_batch, load_prompts


def test_txt_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n# comment\ntwo blue squares\n")
    assert load_prompts(tmp_path / "p.txt").prompts == ["a red circle", "two blue squares"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "tag": "x"}\n{"prompt": "b", "tag": "y", "n": 2}\n')
    ps = load_prompts(tmp_path / "p.jsonl")
    assert ps.prompts == ["a", "b"] and ps.columns([1, 0]) == {"tag": ["y", "x"]}


@pytest.mark.parametrize(
    "content,match",
    [(None, "does not exist"), ("\n# only a comment\n", "holds no prompts"), (b"\xff\xfe\x00", "not readable")],
)
def test_bad_prompt_files(tmp_path, content, match):
    path = tmp_path / "p.txt"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=match):
        load_prompts(path)


def test_groups_spread_over_ranks_and_are_consistent():
    # 2 ranks x 6 images, k = 4 -> 3 prompts per iteration, each exactly 4 times across the ranks
    parts = [group_batch(10, 4, 6, 2, r, seed=1, iteration=5) for r in range(2)]
    prompts = parts[0][0] + parts[1][0]
    groups = parts[0][1] + parts[1][1]
    assert len(set(groups)) == 3 and all(groups.count(g) == 4 for g in set(groups))
    assert all(len({p for p, gg in zip(prompts, groups) if gg == g}) == 1 for g in groups)
    # a 1-rank run of 12 images sees the same global assignment
    one = group_batch(10, 4, 12, 1, 0, seed=1, iteration=5)
    assert one == (prompts, groups)
    assert group_batch(10, 4, 6, 2, 0, seed=1, iteration=6) != parts[0]


def test_batch_arithmetic_error():
    with pytest.raises(
        ValueError, match="2 rank\\(s\\) x 3 images per rank = 6 images is not divisible by the group size k=4"
    ):
        check_group_arithmetic(3, 4, 2)

"""Repetition score, sliding windows and forgetting metrics on fixed inputs (no model)."""
import pytest

from eval.forgetting import backward_transfer, benchmark_deltas, bootstrap_delta, bpb_change, forgetting_rows, verdict
from eval.repetition import repetition_score
from eval.scoring import doc_windows


def test_repetition_score_counts_loops():
    r = repetition_score("a b c a b c a b c")
    assert r["units"] == "words" and r["length"] == 9
    assert r["distinct_1"] == pytest.approx(3 / 9)
    assert r["distinct_2"] == pytest.approx(3 / 8)   # ab bc ca ab bc ca ab bc
    assert r["rep_4"] == pytest.approx(3 / 6)        # the last three 4-grams repeat the first three
    fresh = repetition_score("In the beginning God created the heavens and the earth.")
    assert fresh["rep_4"] == 0.0 and fresh["distinct_2"] == 1.0
    assert repetition_score("one two")["rep_4"] is None  # too short to have a 4-gram


def test_repetition_score_uses_characters_for_unspaced_text():
    r = repetition_score("太初有道道与神同在" * 3)
    assert r["units"] == "chars" and r["length"] == 27
    assert r["rep_4"] == pytest.approx(15 / 24)  # period 9: the 4-grams from position 9 on are repeats
    assert repetition_score("그 그 그 그 그 그")["rep_4"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("n,ctx,stride", [(1, 4, 2), (10, 4, 2), (10, 4, 4), (37, 8, 3), (8, 8, 4)])
def test_doc_windows_score_every_token_once(n, ctx, stride):
    ids = list(range(100, 100 + n))
    windows = doc_windows(ids, prefix_id=3, ctx=ctx, stride=stride)
    scored = []
    for toks, k in windows:
        assert len(toks) - 1 <= ctx and 1 <= k <= len(toks) - 1
        scored += toks[len(toks) - k:]
    assert scored == ids
    assert windows[0][0][0] == 3  # the first token is predicted from the prefix


def test_forgetting_numbers_and_verdicts():
    c = bpb_change(1.000, 1.013)
    assert c["absolute"] == pytest.approx(0.013) and c["relative"] == pytest.approx(0.013)
    assert verdict("en_heldout", 0.013) == "English +1.3% bpb: forgot a little"
    assert verdict("ko_heldout", (1.24 - 2.0) / 2.0) == "Korean -38.0% bpb: learned"
    assert verdict("en_heldout", 0.004).endswith("unchanged")
    assert verdict("en_news", 0.3) == "English (news) +30.0% bpb: forgot a lot"
    rows = forgetting_rows("core", "cpt", {"en_heldout": 1.2, "ko_heldout": 4.0, "de_x": 1.0},
                           {"en_heldout": 1.5, "ko_heldout": 2.0})
    assert [r["set"] for r in rows] == ["en_heldout", "ko_heldout"]  # only sets both were scored on
    assert rows[0]["relative"] == pytest.approx(0.25) and rows[1]["relative"] == pytest.approx(-0.5)
    assert rows[0]["language"] == "en" and rows[1]["verdict"] == "Korean -50.0% bpb: learned"


def test_bootstrap_delta_intervals():
    same = bootstrap_delta([1, 0, 1, 1], [1, 0, 1, 1])
    assert same["delta"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    shifted = bootstrap_delta([0.2, 0.5, 0.1], [1.2, 1.5, 1.1])
    assert shifted["delta"] == pytest.approx(1) and shifted["ci_low"] == pytest.approx(1)
    base = [1] * 50 + [0] * 50
    adapted = [1] * 40 + [0] * 60  # 10 items lost, paired
    d = bootstrap_delta(base, adapted, n_boot=1000, seed=1)
    assert d["delta"] == pytest.approx(-0.1)
    assert d["ci_low"] < -0.1 < d["ci_high"] < 0  # each changed item is a loss: the interval excludes 0
    assert bootstrap_delta(base, adapted, n_boot=1000, seed=1) == d  # seeded
    with pytest.raises(ValueError):
        bootstrap_delta([1, 0], [1])
    rows = benchmark_deltas("a", "b", {"t": {"acc": {"0": 1.0, "1": 0.0, "2": 1.0}}},
                            {"t": {"acc": {"0": 0.0, "1": 0.0, "3": 1.0}}})
    assert len(rows) == 1 and rows[0]["items"] == 2 and rows[0]["delta"] == pytest.approx(-0.5)
    assert rows[0]["base"] == "a" and rows[0]["adapted"] == "b"


def test_backward_transfer_over_stages():
    chain = [{"name": "core", "language": "en", "bpb": {"en_heldout": 1.40, "ko_heldout": 4.7}},
             {"name": "cpt", "language": "ko", "bpb": {"en_heldout": 1.50, "ko_heldout": 1.80}},
             {"name": "sft", "language": "ko", "bpb": {"en_heldout": 1.54, "ko_heldout": 1.90}}]
    bwt = backward_transfer(chain)
    # core's English: 1.54 - 1.40; cpt's Korean: 1.90 - 1.80
    assert bwt["bwt"] == pytest.approx((0.14 + 0.10) / 2)
    assert [(t["stage"], t["set"]) for t in bwt["terms"]] == [("core", "en_heldout"), ("cpt", "ko_heldout")]
    assert backward_transfer(chain[:1]) is None

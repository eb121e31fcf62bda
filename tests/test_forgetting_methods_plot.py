"""The forgetting-methods plot: plain linear axes that include the base (0%), every seed drawn where
its own change puts it, and the arms in the table's order."""
import numpy as np
import pytest

from eval.forgetting_methods import figure, table


def summary(seed_en, seed_ko, base=(1.4, 4.2)):
    arms = {}
    for name, (source, ratio, en, ko) in {"none": ("none", 0.0, seed_en[0], seed_ko[0]),
                                          "data 5%": ("data", 0.05, seed_en[1], seed_ko[1])}.items():
        arms[name] = {"source": source, "ratio": ratio, "distill": 0, "seeds": [0, 1], "en_bpb_by_seed": en,
                      "ko_bpb_by_seed": ko, "en_bpb": float(np.mean(en)), "ko_bpb": float(np.mean(ko)),
                      "en_spread": (max(en) - min(en)) / 2, "ko_spread": (max(ko) - min(ko)) / 2,
                      "en_relative": np.mean(en) / base[0] - 1, "ko_relative": np.mean(ko) / base[1] - 1}
    return {"base": {"en_bpb": base[0], "ko_bpb": base[1]}, "arms": arms, "targets": {}}


def test_plain_axes_with_every_seed_at_its_change():
    import matplotlib.pyplot as plt

    s = summary(seed_en=[[2.0, 2.2], [1.43, 1.44]], seed_ko=[[1.7352, 1.7353], [1.7355, 1.7357]])
    fig = figure(s)
    try:
        en, ko = fig.axes[:2]
        for ax in (en, ko):
            assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear"
            assert ax.get_xlim()[0] <= 0 <= ax.get_xlim()[1]  # the base (0%) is on every axis
        assert ko.get_xlim()[0] < -58 and ko.get_xlim()[1] > 0  # Korean fell ~59%: the axis runs to 0
        # the seeds of each arm, in percent against the base, where the dots are drawn
        dots = [c.get_offsets() for c in en.collections if len(c.get_offsets()) == 2]
        xs = sorted(round(float(x), 6) for d in dots for x in d[:, 0])
        want = sorted(round((v / 1.4 - 1) * 100, 6) for v in (2.0, 2.2, 1.43, 1.44))
        assert xs == pytest.approx(want)
        # ticks read top to bottom as the table: none (ratio 0) above data 5%
        assert [t.get_text() for t in en.get_yticklabels()][::-1] == ["none (2 seeds)", "data 5% (2 seeds)"]
        assert table(s).index("| none |") < table(s).index("| data 5% |")
    finally:
        plt.close(fig)

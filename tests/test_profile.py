"""`cnl profile` reproduces Table 2 of the paper."""

import json

import cnl
from cnl.analysis.profile import TABLE2, profile_model
from cnl.cli import main


def run_json(capsys, *args):
    assert main(["profile", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_profile_json_reproduces_table2(capsys):
    rows = run_json(capsys)
    assert [r["model"] for r in rows] == list(TABLE2)
    for row in rows:
        assert set(row) >= {"model", "params", "macs", "macs_all", "attention_bytes"}
        paper_params, paper_flops = TABLE2[row["model"]]
        assert round(row["params"] / 1e7, 2) == paper_params, row
        assert abs(row["macs"] / 1e10 - paper_flops) <= 0.05, row


def test_exact_counts_at_448():
    base = profile_model("resnet50")
    assert base.params == 23_917_832 and base.macs_all == base.macs and base.attention_bytes == 0
    nl = profile_model("resnet50_nl5")
    assert nl.params - base.params == 7_348_224
    # Five NL maps: two of 56x56 positions squared, three of 28x28 squared, float32.
    assert nl.attention_bytes == (2 * 3136**2 + 3 * 784**2) * 4
    cnl = profile_model("resnet50_cnl5")
    # The 14x14 query against the same five maps.
    assert cnl.attention_bytes == 196 * (2 * 3136 + 3 * 784) * 4
    # Attention products: theta.phi^T and A.g, each Nq*Nr*c multiply-adds with c = 256.
    assert cnl.macs_all - cnl.macs == 2 * 196 * (2 * 3136 + 3 * 784) * 256
    assert nl.macs_all - nl.macs == 2 * (2 * 3136**2 * 256 + 3 * 784**2 * 512)
    # The authors' code evaluates the shared theta (2048 -> 256 over 14x14) five times.
    assert cnl.authors_macs - cnl.macs == 4 * 196 * 2048 * 256
    assert abs(cnl.authors_macs / 1e10 - 2.03) < 0.005


def test_profile_table_and_other_sizes(capsys):
    assert main(["profile", "--models", "resnet18,resnet18_cnl5", "--img-size", "224", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "| resnet18_cnl5 |" in out and "224x224" in out
    assert main(["profile", "--models", "resnet5"]) == 2
    assert "unknown model 'resnet5'" in capsys.readouterr().err


def test_overrides_reach_the_count():
    """The ablation's MACs column follows its recipe's model settings (the demo's width 16)."""
    wide, narrow = profile_model("resnet18", 64, 12), profile_model("resnet18", 64, 12, width=16)
    assert narrow.params == sum(p.numel() for p in cnl.create_model("resnet18", 12, width=16).parameters())
    # A quarter of the channels: a sixteenth of the work, but a quarter for the stem (3 input channels).
    assert 12 < wide.macs / narrow.macs < 16


def test_table2_counts_are_those_of_the_code_before_the_one_model_path(capsys):
    # (params, MACs of the layers, MACs with the attention products) at 448x448, 200 classes,
    # as printed by `cnl profile --json` before the paper's ResNets moved onto the plug path.
    recorded = {
        "resnet50": (23917832, 16393410560, 16393410560),
        "resnet50_nl5": (31266056, 24619866112, 36578613248),
        "resnet50_cnl5": (27084040, 19889272832, 20754708480),
        "resnet101": (42909960, 31262767104, 31262767104),
        "resnet101_nl5": (50258184, 39489222656, 51447969792),
        "resnet101_cnl5": (46076168, 34758629376, 35624065024),
    }
    rows = run_json(capsys)
    assert {r["model"]: (r["params"], r["macs"], r["macs_all"]) for r in rows} == recorded

"""Attention figures (Fig. 3), receptive fields (Fig. 1) and the HTML report, rendered headlessly."""

import numpy as np
import pytest
import torch
from PIL import Image

import cnl
from cnl.analysis.attention import attention_rows, map_cell, parse_queries
from cnl.analysis.receptive_field import receptive_fields
from cnl.cli import main
from cnl.data import eval_transform, load_image
from cnl.data.synth import SynthConfig, generate
from cnl.models.plug import plugged

TINY = SynthConfig(classes=3, train_per_class=3, test_per_class=2, image_size=40, seed=2)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig")
    data = generate(root / "data", TINY)
    args = [
        "--data-root", str(data), "--dataset", "cub", "--img-size", "64", "--epochs", "1", "--batch-size", "4",
        "--workers", "0", "--device", "cpu", "--width", "16", "--output", str(root / "ablation"),
    ]  # fmt: skip
    assert main(["ablate", "--models", "resnet18,resnet18_nl5,resnet18_cnl5", *args]) == 0
    return root / "ablation", data


def test_receptive_fields_of_resnet50():
    fields = receptive_fields(cnl.create_model("resnet50_cnl5", num_classes=2))
    # The well-known 427 px of ResNet-50's last block, stride 32; its query layer4.1: 363.
    assert (fields["layer4.2"].size, fields["layer4.2"].stride) == (427, 32)
    assert (fields["layer4.1"].size, fields["layer2.1"].size, fields["layer2.1"].stride) == (363, 59, 8)


def test_profile_prints_receptive_fields(capsys):
    assert main(["profile", "--receptive-fields", "--models", "resnet50_cnl5"]) == 0
    out = capsys.readouterr().out
    assert "| layer2.1 | response | 59 | 8 |" in out and "| layer4.1 | query | 363 | 32 |" in out


def test_heatmaps_are_the_attention_the_model_returned(ablation):
    runs, data = ablation
    model, _ = cnl.load_model(runs / "resnet18_cnl5" / "checkpoints" / "best.pt")
    image = next((data / "images").rglob("*.jpg"))
    rows = attention_rows(model, image, 64, queries=[(1, 0), (0, 1)])
    assert rows.grid == (2, 2) and len(rows.rows) == 2
    assert [p.layer for p in rows.rows[0]] == list(plugged(model).responses)
    with torch.no_grad():
        _, attention = model.eval().forward_with_attention(eval_transform(64)(load_image(image)).unsqueeze(0))
    for cell, panels in zip(rows.queries, rows.rows):
        for panel in panels:
            expected = attention[panel.layer][0, cell[0] * 2 + cell[1]].reshape(panel.heatmap.shape)
            np.testing.assert_allclose(panel.heatmap, expected.numpy(), rtol=1e-5, atol=1e-7)
            assert panel.heatmap.sum() == pytest.approx(1.0, abs=1e-5)
            assert "RF" in panel.title and panel.layer in panel.title


def test_nl_rows_pick_the_matching_position_of_each_block():
    assert map_cell((1, 1), (2, 2), (8, 8)) == 6 * 8 + 6
    assert map_cell((0, 0), (2, 2), (1, 1)) == 0
    assert parse_queries(["auto"]) is None and parse_queries(["3,4", "0,1"]) == [(3, 4), (0, 1)]
    with pytest.raises(ValueError, match="ROW,COLUMN"):
        parse_queries(["3x4"])


def test_cli_figure_panels_and_size(ablation, tmp_path, capsys):
    runs, data = ablation
    image = next((data / "images").rglob("*.jpg"))
    out = tmp_path / "fig.png"
    checkpoint = runs / "resnet18_nl5" / "checkpoints" / "best.pt"
    assert (
        main(
            [
                "attention",
                "--checkpoint",
                str(checkpoint),
                "--image",
                str(image),
                "--query",
                "0,0",
                "1,1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "2 queries x 5 maps" in capsys.readouterr().out
    with Image.open(out) as figure:
        # 2 rows of 6 panels (image + 5 maps) at 2.2 x 2.4 inches each, 100 dpi.
        assert figure.size == (1320, 480)
    plain = runs / "resnet18" / "checkpoints" / "best.pt"
    assert (
        main(["attention", "--checkpoint", str(plain), "--image", str(image), "--out", str(tmp_path / "none.png")]) == 2
    )
    assert "without NL or CNL modules has no attention to show" in capsys.readouterr().err  # a user error: exit 2
    for cell in ("5,5", "-1,0"):  # a minus: a cell too, not a flag
        assert main(["attention", "--checkpoint", str(checkpoint), "--image", str(image), "--query", cell]) == 2
        assert f"query cell {cell} is outside the 2x2 query grid" in capsys.readouterr().err


def test_report_has_curves_table_chart_and_attention(ablation, tmp_path, capsys):
    runs, _ = ablation
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--images", "1"]) == 0
    page = (out / "index.html").read_text()
    assert "<table>" in page and "resnet18_cnl5" in page
    for name in ("curves.png", "ablation.png", "attention_resnet18_cnl5_0.png", "attention_resnet18_nl5_0.png"):
        assert (out / name).stat().st_size > 0 and f"src='{name}'" in page
    assert not (out / "attention_resnet18_0.png").exists()
    assert "![curves](curves.png)" in (out / "index.md").read_text()

"""The benchmark script runs end to end at a tiny size and writes valid JSON (no timing asserted)."""

import json

from bench.__main__ import main


def test_bench_tiny_writes_json_and_table(tmp_path, capsys):
    res = main(["--size", "tiny", "--out", str(tmp_path)])
    files = list(tmp_path.glob("cpu-tiny-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["machine"]["torch"] and saved["size"] == "tiny"
    assert {"input", "fe", "index", "demo", "gpu"} <= set(saved)
    assert saved["input"][0]["images"] == 64 and saved["input"][0]["ratio"] > 0
    assert saved["fe"]["epochs"] == 2 and 0 <= saved["fe"]["ours_val_acc"] <= 1
    assert saved["index"]["files"] == 40
    assert set(saved["demo"]["stages"]) == {
        "synthesize",
        "index",
        "split",
        "prepare",
        "train@efficientnet_lite0-fe",
        "evaluate@efficientnet_lite0-fe",
        "report",
    }
    assert saved["gpu"]["ours"][0]["batch"] == 8
    out = capsys.readouterr().out
    assert "| input pipeline 32px |" in out and res["table"] in out

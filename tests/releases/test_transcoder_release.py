"""A checked transcoder set released: built (set, records, cards, circuit-tracer layout,
SAELens entry), published to the loopback Hub, loaded back by hf://, read by SAELens' own
class and by circuit-tracer 0.5.0 (its own venv) from the Hub."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

import saekit
from saekit.harness.model import DEFAULT_MODEL_ID
from saekit.kernels.transcoder import TranscoderSet
from tests.transcoder_helpers import make_transcoder

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str):
    from tests.harness.conftest import cli

    return cli(*args)
REPO = "saekit-test/smollm2-tc"


def _set(archs=("skip_transcoder", "transcoder"), widths=(29, 29)) -> TranscoderSet:
    return TranscoderSet({i: make_transcoder(a, d_in=576, d_sae=widths[i], d_out=576, k=3, seed=10 + i,
                                              hook=f"model.layers.{i}.mlp", model=DEFAULT_MODEL_ID)
                          for i, a in enumerate(archs)})


def _checked(name: str, tset: TranscoderSet, tmp_path: Path) -> tuple[str, Path]:
    info = saekit.register(name, tset)
    ref = f"{info.name}/{info.version}"
    chk = tmp_path / "check"
    saekit.check(ref, n_tokens=40, context_size=20, batch_size=2, out_dir=chk, n_quantile_examples=1,
                 n_negative_examples=1)
    return ref, chk


def test_build_publish_and_load_back(hub, tmp_path):
    from saekit.releases.transcoder_release import build_set_release, publish_set_release

    tset = _set()
    ref, chk = _checked("smollm2-tc", tset, tmp_path)
    out = build_set_release(ref, tmp_path / "rel", check_dir=chk, hub_repo=REPO, version="1.0.0")
    release = json.loads((out / "release.json").read_text())
    s = release["sets"][0]
    assert release["kind"] == "transcoder_set" and release["tag"] == "v1.0.0"
    assert s["circuit_tracer"] == "smollm2-tc/circuit-tracer" and s["saelens"] and s["notes"] == []
    for i in (0, 1):
        for f in ("cfg.json", "sae_weights.safetensors", "eval.json", "feature_cards.jsonl"):
            assert (out / "smollm2-tc" / f"layer_{i}" / f).is_file()
        assert (out / "smollm2-tc" / "circuit-tracer" / f"layer_{i}.safetensors").is_file()
        assert s["layers"][i]["metrics"]["fvu"] == json.loads(
            (chk / f"layer_{i}" / "eval.json").read_text())["eval_result_metrics"]["reconstruction_quality"]["fvu"]
    ct = yaml.safe_load((out / "smollm2-tc" / "circuit-tracer" / "config.yaml").read_text())
    assert ct["model_kind"] == "transcoder_set" and "transcoders" not in ct
    entry = yaml.safe_load((out / "pretrained_saes.yaml").read_text())["smollm2-tc"]
    assert entry["repo_id"] == REPO and [e["path"] for e in entry["saes"]] == ["smollm2-tc/layer_0", "smollm2-tc/layer_1"]
    assert "| set |" in (out / "README.md").read_text()

    # SAELens' own class reads each layer folder the yaml points at and computes saekit's outputs
    from sae_lens import SAE

    x = torch.randn(9, 576)
    for i, e in enumerate(entry["saes"]):
        sl = SAE.load_from_disk(str(out / e["path"]))
        torch.testing.assert_close(sl(x), tset[i](x), rtol=1e-5, atol=1e-5)

    res = publish_set_release(out)
    assert res.changed and res.commit
    assert saekit.load(ref).ref and f"{ref}" in res.registry_updated
    again = _cli("release", "publish", str(out), "--json")  # the CLI dispatches a set release
    assert again.exit_code == 0, again.output
    again = json.loads(again.stdout)
    assert not again["changed"] and again["commit"] == res.commit  # idempotent

    back = saekit.load(f"hf://{REPO}@v1.0.0/smollm2-tc")
    assert isinstance(back, TranscoderSet) and back.layers == [0, 1] and back.ref.sha256 == s["sha256"]
    for i in (0, 1):
        torch.testing.assert_close(back[i](x), tset[i](x))
        assert (back[i].hook_in, back[i].architecture) == (f"model.layers.{i}.mlp", tset[i].architecture)

    # circuit-tracer 0.5.0 (own venv) loads the set from the Hub by its documented call
    python = _peer_python()
    xs = tmp_path / "x.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({f"x_{i}": x.clone() for i in (0, 1)}, xs)
    script = (
        "import sys, torch\nfrom safetensors.torch import load_file, save_file\n"
        "from circuit_tracer.utils.hf_utils import load_transcoder_from_hub\n"
        "ts, cfg = load_transcoder_from_hub(sys.argv[1], device=torch.device('cpu'), use_cache=False)\n"
        "xs = load_file(sys.argv[2])\n"
        "save_file({f'y_{i}': ts[i](xs[f'x_{i}']).contiguous() for i in range(len(ts))}, sys.argv[3])\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}
    run = subprocess.run([python, "-c", script, f"{REPO}/smollm2-tc/circuit-tracer@v1.0.0", str(xs),
                          str(tmp_path / "y.safetensors")], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    ys = load_file(tmp_path / "y.safetensors")
    for i in (0, 1):
        torch.testing.assert_close(ys[f"y_{i}"], tset[i](x), rtol=1e-5, atol=1e-5)


def _peer_python() -> str:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "peer_venv.sh"), "circuit-tracer"], capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_topk_set_and_refusals(tmp_path):
    """A TopK set (what saekit trains) has no SAELens class: the release says so and writes
    no pretrained_saes.yaml; layers of two widths get no circuit-tracer layout (circuit-tracer
    refuses them); a record of another set, or a non-empty --out, is refused."""
    from saekit.releases.transcoder_release import build_set_release
    from saekit.schemas import GateFailedError, InputError

    ref, chk = _checked("tc-topk", _set(("topk_transcoder", "topk_transcoder"), widths=(24, 31)), tmp_path)
    out = build_set_release(ref, tmp_path / "rel", check_dir=chk, hub_repo=REPO)
    s = json.loads((out / "release.json").read_text())["sets"][0]
    assert not s["saelens"] and not (out / "pretrained_saes.yaml").exists()
    assert s["circuit_tracer"] is None and not (out / "tc-topk" / "circuit-tracer").exists()
    assert "one width for every layer" in s["notes"][0] and "topk_transcoder" in s["notes"][1]
    r = _cli("release", "transcoders", ref, "--check", str(chk), "--out", str(tmp_path / "rel3"), "--repo", REPO,
             "--version", "2.0.0", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tag"] == "v2.0.0" and (tmp_path / "rel3" / "tc-topk" / "set.json").is_file()
    with pytest.raises(InputError, match="not an empty folder"):
        build_set_release(ref, out, check_dir=chk, hub_repo=REPO)
    for bad in ("../escape", "a/b", "graphs", "SHA256SUMS", "README.md"):  # a path or the release's own names
        with pytest.raises(InputError, match="must be one folder name"):
            build_set_release(ref, tmp_path / "rel4", check_dir=chk, hub_repo=REPO, set_id=bad)
        assert not (tmp_path / "rel4").exists() and not (tmp_path / "escape").exists()
    other = saekit.register("tc-other", _set(("transcoder", "transcoder")))
    with pytest.raises(GateFailedError, match="check it first"):
        build_set_release(f"{other.name}/{other.version}", tmp_path / "rel2", check_dir=chk, hub_repo=REPO)


def test_graph_released_with_its_set(hub, tmp_path, capsys):
    """`saekit release transcoders --graph DIR`: the graph of this very set goes under
    graphs/<slug>/, in SHA256SUMS, release.json and the model card; publishing carries it and the
    Hub serves the same bytes. A graph of another set, a missing, extra or linked file: exit 2."""
    import shutil

    from huggingface_hub import hf_hub_download

    from saekit.releases.bundle import read_sums

    ref, chk = _checked("tc-graph", _set(("transcoder", "transcoder")), tmp_path)
    prompt = "The cat sat"
    g = tmp_path / "Cat Graph"
    saekit.graph(prompt, ref, out=g, max_n_logits=2, batch_size=64)
    out = tmp_path / "rel"
    r = _cli("release", "transcoders", ref, "--check", str(chk), "--out", str(out), "--repo", REPO, "--graph", str(g),
             "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["graphs"] == ["graphs/cat-graph"]
    release = json.loads((out / "release.json").read_text())
    (entry,) = release["graphs"]
    assert entry["prompt"] == prompt and entry["transcoders_sha256"] == release["sets"][0]["sha256"]
    names = ("graph.json", "graph.safetensors", "graph-meta.json", "index.html")
    sums = read_sums(out)
    assert all(f"graphs/cat-graph/{n}" in sums for n in names)
    card = (out / "README.md").read_text()
    assert "## Graphs" in card and f"[\"{prompt}\"](graphs/cat-graph/index.html)" in card

    res = _cli("release", "publish", str(out), "--json")
    assert res.exit_code == 0, res.output
    for n in names:
        got = hf_hub_download(REPO, f"graphs/cat-graph/{n}", revision="v1.0.0", endpoint=hub.url,
                              local_dir=tmp_path / "download")  # endpoint: huggingface_hub reads HF_ENDPOINT at import
        assert Path(got).read_bytes() == (g / n).read_bytes()

    def refused(folder: Path, match: str) -> None:  # the real entry point: its error line and exit code
        from saekit.cli import main

        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["release", "transcoders", ref, "--check", str(chk), "--out", str(tmp_path / "bad"), "--repo", REPO,
                  "--graph", str(folder)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and match in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()

    def variant(name: str) -> Path:
        shutil.copytree(g, tmp_path / name)
        return tmp_path / name

    other = variant("other")
    meta = json.loads((other / "graph-meta.json").read_text())
    meta["transcoders"]["sha256"] = "0" * 64
    (other / "graph-meta.json").write_text(json.dumps(meta))
    refused(other, "not of " + ref)
    (variant("missing") / "index.html").unlink()
    refused(tmp_path / "missing", "missing index.html")
    (variant("extra") / "notes.txt").write_text("x")
    refused(tmp_path / "extra", "unexpected notes.txt")
    linked = variant("linked")
    (linked / "graph.json").unlink()
    (linked / "graph.json").symlink_to(g / "graph.json")
    refused(linked, "graph.json")


def test_graph_prompt_cannot_break_the_model_cards_link():
    from saekit.releases.transcoder_release import _link_text

    text = _link_text("x](http://evil) [y\nz")
    assert text == '"x\\](http://evil) \\[y\\nz"' and "\n" not in text

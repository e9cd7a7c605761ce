"""vmr/report.py: a self-contained page from schema-correct run folders, checked as text and in Chromium."""
import base64
import json
import re
import shutil

import pytest

from vmr import report

KS = (1, 5, 10, 20, 25, 50, 100)
IDS = ["clipA", "clipB", "clipC"]


def recall(ranks, n):
    block = {f"R@{k}": sum(r <= k for r in ranks) / len(ranks) for k in KS}
    block.update(MedR=float(sorted(ranks)[len(ranks) // 2]), MeanR=sum(ranks) / len(ranks), ranks=ranks)
    return block


def chance(n):
    return {**{f"R@{k}": min(k / n, 1.0) for k in KS}, "MedR": (n + 1) / 2, "MeanR": (n + 1) / 2}


def write_run(run_dir, model, ranks, segments):
    """A run folder as vmnet/test.py or transformer/test.py writes it, plus the trainer's log."""
    run_dir.mkdir(parents=True)
    n = len(IDS)
    block = recall(ranks, n)
    metrics = {
        "model": model, "checkpoint": str(run_dir / "best.pt"), "checkpoint_sha256": "0" * 64,
        "features": {"video": "clip", "audio": "vggish"}, "test_csv": "test.csv", "seed": 0, "gallery": n,
        "video_to_music": block, "music_to_video": recall(ranks[::-1], n),
        "batch1024": {k: v for k, v in block.items() if k != "ranks"},
        "provenance": {"video": {"model": "clip", "weights": "random"}, "audio": {"model": "vggish", "weights": "official"}},
        "baselines": {"chance": chance(n), "cca": {"video_to_music": recall([2, 3, 1], n), "music_to_video": recall([3, 1, 2], n)},
                      "aligned_linear": {"video_to_music": recall([1, 3, 2], n), "music_to_video": recall([2, 1, 3], n)}},
        "segment": None,
        "fad": {"top1": 1.234, "chance": {"mean": 2.5, "std": 0.25, "seeds": 5}, "n_queries": n},
        "av_align": {"retrieved": 0.21, "ground_truth": 0.35},
    }
    queries = []
    for i, vid in enumerate(IDS):
        top = [{"id": IDS[(i + j) % n], "score": 0.9 - 0.1 * j} for j in range(n)] + [{"id": "extra", "score": 0.1}] * 2
        query = {"id": vid, "gt": vid, "top": top}
        if segments:
            query["segments"] = [
                {"start": 0, "end": 4, "track": IDS[i], "track_start": 0, "track_end": 4, "score": 0.8},
                {"start": 4, "end": 9, "track": IDS[(i + 1) % n], "track_start": 3, "track_end": 8, "score": 0.55},
                {"start": 9, "end": 12, "track": IDS[i], "track_start": 9, "track_end": 12, "score": 0.61},
            ]
        queries.append(query)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "retrieval.json").write_text(json.dumps({"model": model, "queries": queries}))
    log = ["epoch,train_loss,val_R@1,val_R@10,val_MedR,seconds"]
    log += [f"{e},{1.0 / e:.4f},{0.1 * e:.2f},{0.2 * e:.2f},{5 - e},{0.5 * e}" for e in range(1, 5)]
    (run_dir / "train_log.csv").write_text("\n".join(log) + "\n")


@pytest.fixture
def runs(tmp_path, make_clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    for vid in IDS[:2]:  # clipC has no video: its section says so instead of showing a broken image
        make_clip(f"{vid}.mp4", seconds=2.0)
        shutil.move(str(tmp_path / f"{vid}.mp4"), videos / f"{vid}.mp4")
    write_run(tmp_path / "vmnet_eval", "vmnet", [1, 2, 3], segments=False)
    write_run(tmp_path / "transformer_eval", "transformer", [1, 1, 2], segments=True)
    return tmp_path, videos


def build(tmp_path, videos, *extra):
    out = tmp_path / "report.html"
    argv = ["--run", f"VM-NET={tmp_path / 'vmnet_eval'}", "--run", f"Transformer={tmp_path / 'transformer_eval'}",
            "--videos", str(videos), "--out", str(out), *extra]
    return report.main(argv), out


def test_report_is_self_contained_with_tables_and_images(runs, capsys):
    tmp_path, videos = runs
    rc, out = build(tmp_path, videos)
    assert rc == 0
    page = out.read_text(encoding="utf-8")
    assert "http" not in page.lower()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page), "every resource must be inline"
    assert page.count('<table id="metrics">') == 1
    # each model beside its chance and both tuned baselines, both directions
    assert page.count('class="baseline"><td>  chance') == 4 and page.count("tuned CCA (mean-pooled), video → music") == 2
    assert page.count("aligned linear (per second), music → video") == 2
    assert "<td>33.3</td>" in page and "<td>66.7</td>" in page  # R@1 of ranks [1, 2, 3] and [1, 1, 2]
    assert "FAD and AV-Align" in page and "1.2340" in page and "fad.chance.mean" in page and "2.5000" in page
    # features from random weights: a banner at the top and on every section built from them
    assert page.count("video features were computed with RANDOM weights") == 2 * 4
    sources = re.findall(r'<img src="([^"]*)"', page)
    # recall curves, training curves, 2 middle frames (clipC has no video), 3 Transformer timelines
    assert len(sources) == 1 + 1 + 2 + 3
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(re.sub(r"\s", "", src.split(",", 1)[1]))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "no frame: no video named clipC" in page
    assert page.count('class="gt"') == 2 * 3  # the ground truth is in every top-5 here
    assert "clipC" in capsys.readouterr().err


def test_queries_flag_limits_examples(runs):
    tmp_path, videos = runs
    rc, out = build(tmp_path, videos, "--queries", "1")
    page = out.read_text(encoding="utf-8")
    assert rc == 0 and page.count("<h3>query ") == 1 and "query clipB" not in page


def test_missing_run_folder_is_reported_and_the_rest_is_written(runs, capsys):
    tmp_path, videos = runs
    (tmp_path / "vmnet_eval" / "metrics.json").unlink()
    rc, out = build(tmp_path, videos)
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{tmp_path / 'vmnet_eval'}: no metrics.json" in err and "1 failed" in err
    page = out.read_text(encoding="utf-8")
    assert "Transformer (transformer)" in page and "VM-NET (" not in page


def test_bad_run_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        report.main(["--run", "no-equals-sign"])
    assert e.value.code == 2 and "expected NAME=DIR" in capsys.readouterr().err



# VM-NET's train_log.csv with two learning rates: its epochs restart at 1 with lr_index 1 (vmnet/train.py)
TWO_LR_LOG = """epoch,lr_index,train_loss,val_R@1,val_R@10,val_MedR,seconds,loss_xy,loss_yx,loss_x,loss_y,lr
1,0,0.9,0.1,0.3,4,0.1,,,,,0.001
2,0,0.7,0.2,0.4,3,0.1,,,,,0.001
3,0,0.6,0.3,0.5,2,0.1,,,,,0.001
1,1,0.95,0.05,0.2,5,0.1,,,,,0.0003
2,1,0.85,0.15,0.35,4,0.1,,,,,0.0003
3,1,0.8,0.25,0.45,3,0.1,,,,,0.0003
"""


def lines_of(ax):
    return [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]


def test_training_curves_draw_one_line_per_learning_rate(tmp_path):
    write_run(tmp_path / "vm", "vmnet", [1, 2, 3], segments=False)
    (tmp_path / "vm" / "train_log.csv").write_text(TWO_LR_LOG)
    fig = report.training_curves([report.load_run("VM-NET", tmp_path / "vm")])
    loss_ax, recall_ax = fig.axes
    assert lines_of(loss_ax) == [("VM-NET lr 0.001", [1, 2, 3], [0.9, 0.7, 0.6]),
                                 ("VM-NET lr 0.0003", [1, 2, 3], [0.95, 0.85, 0.8])]
    assert [label for label, _, _ in lines_of(recall_ax)] == [
        "VM-NET lr 0.001 val_R@1", "VM-NET lr 0.001 val_R@10", "VM-NET lr 0.0003 val_R@1", "VM-NET lr 0.0003 val_R@10"]
    assert loss_ax.get_lines()[1].get_color() == recall_ax.get_lines()[2].get_color()
    # a log without lr_index (the Transformer's) stays one line per run
    write_run(tmp_path / "tr", "transformer", [1, 1, 2], segments=True)
    fig = report.training_curves([report.load_run("Transformer", tmp_path / "tr")])
    assert [(label, x) for label, x, _ in lines_of(fig.axes[0])] == [("Transformer", [1, 2, 3, 4])]


def test_vmnet_train_log_png_draws_one_line_per_learning_rate(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from vmr.training import plot_log

    drawn, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), savefig(fig, *a, **k))[1])
    history = [{"epoch": e, "lr_index": i, "train_loss": 1.0 - 0.1 * e - i / 20, "lr": lr, "val_R@1": "",
                "val_R@10": 0.1 * e} for i, lr in enumerate((1e-3, 3e-4)) for e in (1, 2)]
    plot_log(history, tmp_path / "train_log.png")
    assert (tmp_path / "train_log.png").read_bytes()[:4] == b"\x89PNG"
    loss_ax, recall_ax = drawn[0].axes
    assert [(label, x) for label, x, _ in lines_of(loss_ax)] == [("lr 0.001", [1, 2]), ("lr 0.0003", [1, 2])]
    assert [label for label, _, _ in lines_of(recall_ax)] == ["lr 0.001 val_R@10", "lr 0.0003 val_R@10"]


@pytest.mark.browser
def test_report_renders_in_headless_chromium(runs):
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver, or make sysdeps)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    tmp_path, videos = runs
    rc, out = build(tmp_path, videos)
    assert rc == 0
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome_profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        driver.set_window_size(1280, 2000)
        driver.get(out.as_uri())
        assert driver.find_element(By.ID, "metrics").find_elements(By.TAG_NAME, "tr")
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0);")
        assert len(widths) == 7 and all(w > 0 for w in widths), widths
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    finally:
        driver.quit()

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

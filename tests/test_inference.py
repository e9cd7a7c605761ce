"""How the networks run (feature_extraction/inference.py): batches shared across videos, --parallel, --precision."""
import threading

import numpy as np
import pytest
import torch

from feature_extraction import extract, inference, pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_calls_waiting_while_a_batch_runs_go_together_and_get_their_own_rows():
    """Three threads call while a first call runs: the next batch holds all three, each gets its own rows."""
    linear = torch.nn.Linear(4, 3)
    sizes, first_running, release = [], threading.Event(), threading.Event()

    def model(x):
        sizes.append(len(x))
        if len(sizes) == 1:
            first_running.set()
            release.wait(5)
        return linear(x)

    shared = inference.SharedBatches(model)
    inputs = [torch.randn(n, 4, generator=torch.Generator().manual_seed(n)) for n in (2, 1, 3, 2)]
    outputs = [None] * 4

    def call(i):
        outputs[i] = shared(inputs[i])

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    assert first_running.wait(5)
    threads += [threading.Thread(target=call, args=(i,)) for i in (1, 2, 3)]
    for t in threads[1:]:
        t.start()
    while len(shared.waiting) < 3:  # the three calls queue behind the running one
        threading.Event().wait(0.01)
    release.set()
    for t in threads:
        t.join(5)
    assert sizes == [2, 1 + 3 + 2]
    assert (shared.batches, shared.shared) == (2, 1)
    with torch.no_grad():
        for x, y in zip(inputs, outputs):
            torch.testing.assert_close(y, linear(x))


def test_calls_of_other_shapes_never_share_a_batch_and_errors_reach_their_callers():
    seen = []

    def model(x):
        seen.append(tuple(x.shape))
        if x.shape[1] == 5:
            raise ValueError("width 5 refused")
        return x.sum(1, keepdim=True)

    shared = inference.SharedBatches(model)
    assert shared(torch.ones(2, 3)).tolist() == [[3.0], [3.0]]
    with pytest.raises(ValueError, match="width 5 refused"):
        shared(torch.ones(1, 5))
    assert shared(torch.ones(1, 4)).tolist() == [[4.0]]  # the error did not leave it busy
    assert seen == [(2, 3), (1, 5), (1, 4)]


def test_two_inputs_are_joined_alike():
    shared = inference.SharedBatches(lambda a, b: a - b)
    a, b = torch.arange(6.0).view(3, 2), torch.ones(3, 2)
    torch.testing.assert_close(shared(a, b), a - b)


def test_bfloat16_on_the_cpu_runs_and_stays_close_to_float32():
    """The CPU's bfloat16 path (BatchNorm folded, bfloat16 weights): float32 in and out."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
    got = inference.prepare(model, "cpu", "bfloat16")(x)
    assert got.dtype == torch.float32 and got.shape == (4, 5)
    assert isinstance(model[1], torch.nn.Identity) and model[0].weight.dtype == torch.bfloat16  # folded, converted
    assert not torch.equal(got, want)  # it did run in bfloat16
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.99


def test_precision_flag(vmr_env, make_clip, tmp_path, capsys):
    parser = pipeline.build_parser(extract.feature_modules())
    assert parser.parse_args(["--videos", "v", "--out", "o"]).precision == "auto"
    assert "--precision {auto,float32,float16,bfloat16,int8}" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--videos", "v", "--out", "o", "--precision", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err
    clip = make_clip("v.mp4", seconds=1.2)
    with pytest.raises(SystemExit, match="--precision float16 needs --device cuda; the CPU runs float32 or bfloat16"):
        extract.main(["--videos", str(clip), "--out", str(tmp_path / "out"), "--features", "clip",
                      "--weights", "random", "--precision", "float16"])
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_parallel_videos_give_the_sequential_rows(vmr_env, make_clip, tmp_path, capsys):
    """--parallel 3: three videos in flight, their frames and examples sharing batches, the same arrays."""
    clips = [make_clip(f"c{i}.mp4", seconds=2.2 + i, seed=i, motion=[(0, 3)]) for i in range(3)]
    common = ["--videos", *map(str, clips), "--features", "resnet", "vggish", "--resnet", "50", "--weights", "random",
              "--batch_size", "2"]
    assert extract.main([*common, "--out", str(tmp_path / "one")]) == 0
    assert extract.main([*common, "--out", str(tmp_path / "three"), "--parallel", "3"]) == 0
    assert "3 videos: 3 extracted" in capsys.readouterr().out
    for i, clip in enumerate(clips):
        for folder, width in (("resnet50", 2048), ("vggish", 128)):
            a, b = (np.load(tmp_path / run / folder / f"{clip.stem}.npy") for run in ("one", "three"))
            assert a.shape == (2 + i, width)
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)

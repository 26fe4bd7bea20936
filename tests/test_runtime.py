import torch

from rtmdet_lesson.runtime import FAST_ENV, banner, fast_mode, pick_device, seed_everything


def test_fast_mode_reads_the_environment(monkeypatch):
    for value, expected in [("1", True), ("true", True), ("0", False), ("", False)]:
        monkeypatch.setenv(FAST_ENV, value)
        assert fast_mode() is expected
    monkeypatch.delenv(FAST_ENV)
    assert fast_mode() is False


def test_pick_device_honours_a_preference_and_falls_back_to_an_available_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert torch.zeros(1, device=pick_device()).device.type in {"cpu", "cuda", "mps"}


def test_seed_everything_makes_draws_repeat():
    seed_everything(3)
    first = torch.rand(4)
    generator = seed_everything(3)
    torch.testing.assert_close(torch.rand(4), first)
    torch.testing.assert_close(torch.rand(4, generator=generator), torch.rand(4, generator=seed_everything(3)))


def test_banner_names_torch_and_the_mode(monkeypatch):
    monkeypatch.setenv(FAST_ENV, "1")
    assert torch.__version__ in banner() and "FAST" in banner()

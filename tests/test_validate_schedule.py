"""When held-out evaluations run: ``should_validate`` and the online kNN monitor's schedule."""

from __future__ import annotations

from types import SimpleNamespace

from backbone_ssl.methods.support import should_validate
from backbone_ssl.monitors import OnlineKNN


def fake_trainer(epoch: int, max_epochs: int | None = 10, max_steps: int = -1,
                 global_step: int = 5) -> SimpleNamespace:
    # Lightning's is_last_batch is True whenever on_train_epoch_end runs
    return SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, max_steps=max_steps,
                           global_step=global_step, sanity_checking=False, is_last_batch=True)


def test_should_validate_with_unbounded_epochs_waits_for_the_interval():
    # trainer.max_epochs=-1 (the run ends by max_steps): only every N epochs and at max_steps
    assert [should_validate(fake_trainer(e, max_epochs=-1, max_steps=100), 3)
            for e in range(6)] == [False, False, True, False, False, True]
    assert should_validate(fake_trainer(1, max_epochs=-1, max_steps=100, global_step=100), 3)
    assert [should_validate(fake_trainer(e, max_epochs=4), 3) for e in range(4)] == [
        False, False, True, True]


class CountingKNN(OnlineKNN):
    def __init__(self, every: int) -> None:  # no folders: measure() is replaced
        self.every = every
        self.calls: list[int] = []

    def measure(self, pl_module) -> dict[str, float]:
        self.calls.append(pl_module.epoch)
        return {"top1": 0.5, "top5": 1.0}


def test_online_knn_honours_val_every_n_epochs():
    monitor = CountingKNN(every=2)
    for epoch in range(5):
        module = SimpleNamespace(epoch=epoch, log=lambda *a, **k: None)
        monitor.on_train_epoch_end(fake_trainer(epoch, max_epochs=5), module)
    assert monitor.calls == [1, 3, 4]  # epochs 2 and 4 (1-based), and the last one

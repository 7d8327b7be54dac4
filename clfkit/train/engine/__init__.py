"""The training engine: :mod:`~clfkit.train.engine.runtime` (device, precision, channels_last,
compile, seeding), :mod:`~clfkit.train.engine.batches` (epoch order, batches, device-side batch
preparation), :mod:`~clfkit.train.engine.loop` (one step, one epoch, over one TrainState),
:mod:`~clfkit.train.engine.guard` (non-finite loss), :mod:`~clfkit.train.engine.snapshot` (RNG and in-epoch
state a checkpoint captures), :mod:`~clfkit.train.engine.distributed` (DDP), :mod:`~clfkit.train.engine.ema`
and :mod:`~clfkit.train.engine.stopping`.

It knows nothing of run folders or files: it imports only the layers below (recipe, data).
"""

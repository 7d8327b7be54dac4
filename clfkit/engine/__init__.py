"""The training engine: :mod:`~clfkit.engine.runtime` (device, precision, channels_last,
compile, seeding), :mod:`~clfkit.engine.batches` (epoch order, batches, device-side batch
preparation), :mod:`~clfkit.engine.loop` (one step, one epoch, over one TrainState),
:mod:`~clfkit.engine.guard` (non-finite loss), :mod:`~clfkit.engine.snapshot` (RNG and in-epoch
state a checkpoint captures), :mod:`~clfkit.engine.distributed` (DDP), :mod:`~clfkit.engine.ema`
and :mod:`~clfkit.engine.stopping`.

It knows nothing of run folders or files: it imports only the layers below (recipe, data).
"""

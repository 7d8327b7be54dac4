"""Training: :mod:`~clfkit.train.trainer` (``train()``: recipe in, run folder out),
:mod:`~clfkit.train.prepare` (the set-up steps before the epochs, each returning a frozen record),
:mod:`~clfkit.train.build` (recipe -> data, model, loss, optimizer, schedule),
:mod:`~clfkit.train.engine` (device, batches, one step, one epoch, DDP, EMA),
:mod:`~clfkit.train.param_groups`, :mod:`~clfkit.train.init_weights` and
:mod:`~clfkit.train.weights_receipt` (starting from other weights), :mod:`~clfkit.train.model_stats`.

Nothing is imported here: ``import clfkit.train.engine`` must not import the trainer."""

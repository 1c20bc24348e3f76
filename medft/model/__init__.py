"""medft.model: timm backbones, freezing schedules and the LightningModule.

Every medft module that imports MONAI imports Lightning first (``medft.data.transforms``,
``medft.data.cache``, ``medft.data.albu``, ``medft.model.features``), for a reason outside
medft: ``typing`` caches ``Optional[Union[...]]`` by an inner Union that compares equal in
any order, and MONAI's import creates ``Optional[Union[float, int]]``. If that happens
before Lightning defines ``Trainer(limit_train_batches: Optional[Union[int, float]])``, the
Trainer's annotation becomes ``(float, int, None)`` and LightningCLI (jsonargparse) reads
``--trainer.limit_train_batches 1`` as ``1.0``: the whole epoch instead of one batch
(``tests/test_import_order.py``).
"""

"""One LightningModule per stage: ``pretrain``, ``sft``, ``reward``, ``ppo``."""

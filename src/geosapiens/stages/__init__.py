"""Training stages as thin LightningModules."""

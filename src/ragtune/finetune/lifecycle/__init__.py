"""The model lifecycle: the registry of trained models, promotion gates, serving references and
hyperparameter search."""

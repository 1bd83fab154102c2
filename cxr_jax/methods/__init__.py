"""The methods, one package each: model(s), losses, trainer, evaluator and inference code together."""

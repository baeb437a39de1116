"""The self-retraining loop (`recsys.retrain.loop`) and the drift scenario that exercises it against simulated
shoppers (`recsys.retrain.simulate`)."""

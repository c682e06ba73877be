"""Training: the loop (trainer), checkpoints, multi-process launch, evaluation, metrics and the
run report. Nothing that answers a request (agent, serving) imports this package."""
